"""Benchmarks. bench.py (top level) is the training benchmark; its parts are here:

- `cases`: one timed configuration each, stepped in turn; `flops`: the step's FLOPs, the
  machine's matmul peak, the matrix products' time; `report`: the table and ratios;
  `input_speed`: the input pipeline alone; `peers`: pmixer/SASRec.pytorch in the same run.

The other benchmarks run from the repository root as `python -m benchmarks.<name>`:

- `data_dirs`: step time on several data directories, interleaved;
- `inference`: infer.py's exact top-k at the competition's scale;
- `multimodal`: large multimodal tables: conversion, memory, step time;
- `sampler`: SmartNegativeSampler throughput.
"""
