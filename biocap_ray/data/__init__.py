"""The data layer: one record schema for an organism image, its BioCLIP text types,
readers (WebDataset shards, image folder + metadata, Parquet) and writers, local or s3://."""
