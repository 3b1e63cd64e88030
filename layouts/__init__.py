"""Readers and writers of the data layouts, one module per layout and role; `dataset.load_dataset`
is the one entry the trainer calls, and it picks the reader from the files it finds.

- `v1`: the competition platform's layout (../shared/docs/data-format.md: seq.jsonl +
  seq_offsets.pkl, indexer.pkl, item_feat_dict.json, creative_emb/) -> `dataset.Dataset`;
- `v2`: the public parquet release (../shared/docs/data-format-v2.md: seq/, user_feat/,
  item_feat/, indexer.pkl) -> the same `dataset.Dataset`;
- `write_v1`, `write_v2`: write those layouts from raw ids (tests, the demo, prepare_data.py,
  make_large_data.py); `large_v2`: the large synthetic V2 directory of make_large_data.py;
- `inference_v1`: a competition inference directory (predict_seq.jsonl, predict_set.jsonl) ->
  `inference_v1.InferenceData`; `inference_v2`: candidate/ and seq/ of a V2 directory -> the same;
- `mm`: the multimodal vectors of both layouts (creative_emb/ pickles and folders, mm_emb/
  parquet) converted to float16 tables.
What both parses share (the in-memory types, feature tables, schema discovery, the cache) stays
in dataset.py.
"""
