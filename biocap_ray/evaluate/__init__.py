"""Evaluation: zero-shot species classification and image↔text retrieval of open_clip checkpoints."""
