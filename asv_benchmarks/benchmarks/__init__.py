"""asv benchmarks for fastbp: the workloads of issue 9 (see common.py)."""
