"""The model's CPU fast paths, and what keeps them whole under torch.compile: the cheap dropout
mask and dropout (dropout), the causal-split attention with its hand-written backward and the
other attention implementations (attention), and two torch CPU kernels' slow cases avoided:
LayerNorm's weight/bias reduction (layer_norm) and the embedding backward (embedding)."""
