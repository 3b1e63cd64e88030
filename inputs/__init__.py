"""What feeds the training step, from a parsed dataset to device tensors.

- `batching`: the baseline's samples, vectorized (windows, positives, histories), the splits
  (random_user, leave_one_out, competition) and the validation/test queries;
- `input_pipeline`: the background workers that assemble batches ahead of the model, in order;
- `host_tables`: multimodal rows gathered on the host from memory-mapped tables.
"""
