"""main.py's parts; main.py itself reads the run top to bottom and calls them in order.

- `flags`: every flag of main.py, its help and its checks; `cli_types`: range-checked argparse
  types shared by every command;
- `setup`: from flags to objects: logging, seed, device, data, split, sampler, model;
- `step`: one training step and one epoch (inputs onto the device, the loss, the update);
- `validation`: validation loss and rankings, the best checkpoint, the final test;
- `run_state`: what a checkpoint carries for an exact resume, saved and restored;
- `optim`: the optimizers (dense and sparse embeddings); `distributed`: torchrun / DDP.
"""
