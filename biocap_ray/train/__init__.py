"""Training: BioCAP contrastive learning of an open_clip model on images + taxonomic text +
captions, as Ray Train DDP (``run.train``): the streaming ingest (``ingest``, ``order``), the
loop on each worker (``loop``, ``objective``), validation at checkpoints (``validation``).

May import: ``data``, ``models``, ``evaluate`` (its metrics, for validation) and the neutral
top-level modules; never ``caption`` or ``tune``.
"""
