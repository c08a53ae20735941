"""Stage 2: synthesize task triplets, filter them for consistency, format post-training data; `run` chains them."""
