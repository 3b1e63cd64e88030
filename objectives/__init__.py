"""What the step optimises: the loss and the negatives it scores.

- `objective`: the objective's flags and the step's loss (one call for every loss);
- `losses`: the loss registry (bce, sampled softmax, chunked full softmax, gBCE) and logQ;
- `negatives`: negatives shared by the batch (uniform, popularity) and in-batch ones, with their
  log proposal probabilities. The per-position negatives of the baseline are in sampling.py.
"""
