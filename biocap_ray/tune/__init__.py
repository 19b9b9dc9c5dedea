"""Ray Tune sweeps whose trials are full training runs (Ray Train inside each trial).

May import: ``data``, ``train`` and the neutral top-level modules (``plots`` for its figure).
"""
