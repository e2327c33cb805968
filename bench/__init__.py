"""Benchmarks: FLOPs, CPU stage timings, memory, and the GPU script (see bench/README.md)."""
