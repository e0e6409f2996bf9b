"""The compressor benchmark: `python bench/run.py [--quick|--smoke]` (see docs/benchmarks.md)."""
