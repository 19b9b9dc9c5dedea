"""Models every stage shares: the BioCAP open_clip model and its preprocessing (``clip``), its
files (``checkpoints``: exports, training state, loading any of them), weights resolved to local
paths (``download``) and the built-in tiny captioners for tests and demos.

Imports only ``storage`` and ``config`` from the project: stages import this, never the reverse.
"""
