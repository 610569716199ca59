"""Benchmarks, run by hand: `python -m bench.kernels`, `python -m bench.train` (see bench/README.md)."""
