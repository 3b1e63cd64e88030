"""Readers and writers of the data layouts; `dataset.load_dataset` is the one entry the trainer
calls, and it picks the reader from the files it finds.

- `v2`: the public parquet release (../shared/docs/data-format-v2.md: seq/, user_feat/,
  item_feat/, indexer.pkl) -> the same `dataset.Dataset` as the V1 parse;
- `write_v2`: writes that layout (tests, the demo, prepare_data.py, make_large_data.py);
- `inference_v2`: candidate/ and seq/ of a V2 directory -> `inference_data.InferenceData`;
- `values`: checks of single values that every layout applies the same way.

The V1 reader (seq.jsonl + pickles) still lives in dataset.py; it moves here as `v1` later.
"""
