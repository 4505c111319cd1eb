"""GPU measurements: CUDA correctness tests, step speed and packing, the claim on Fashion-MNIST (run.py)."""
