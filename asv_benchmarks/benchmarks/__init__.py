"""asv benchmarks for fastbp: workloads W1-W5 (see common.py)."""
