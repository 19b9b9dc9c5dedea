"""Training: BioCAP contrastive learning of an open_clip model on images + taxonomic text +
captions, as Ray Train DDP (``run.train``), with the dual projector and text-type mixing of
the recipe (``model``, ``objective``)."""
