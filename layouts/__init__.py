"""Readers and writers of the data layouts (V1 jsonl + pickles, V2 parquet) and their multimodal tables."""
