"""Evaluation: zero-shot species classification and image↔text retrieval of open_clip checkpoints.

``run.evaluate`` is the job; ``records``, ``classes``, ``embed`` and ``metrics`` are what it
and training's validation share; ``report`` draws the pictures.

May import: ``data``, ``models`` and the neutral top-level modules; never ``train``.
"""
