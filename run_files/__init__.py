"""Everything a run writes to disk and how it is found again.

- `checkpoint`: atomic checkpoints (weights + config.json), their order, pruning, loading;
- `run_folders`: run names under runs/, default folders, and which run --resume continues;
- `run_summary`: the end-of-run summary (summary.json and the printed table);
- `tb_meta`: TensorBoard HParams and the run's legend;
- `tempdirs`: temporary folders that a crash does not leave behind.
"""
