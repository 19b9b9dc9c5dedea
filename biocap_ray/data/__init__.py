"""The data layer: one record schema for an organism image, its BioCLIP text types,
readers (WebDataset shards, image folder + metadata, Parquet) and writers, local or s3://,
ingest (``ops``), the held-out ``split``, taxon lists (``taxonomy``).

May import: only the neutral top-level modules (config, storage); every stage imports this.
"""
