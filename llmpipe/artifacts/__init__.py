"""On-disk formats shared by all stages: manifests, document Parquet, token shards, checkpoints."""
