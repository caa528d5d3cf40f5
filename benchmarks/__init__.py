"""Cove's benchmarks: every figure next to a baseline measured in the same run.

`python -m benchmarks [NAME ...] [--runs N]` (or `make bench`) prints a table and writes
benchmarks/results/latest.json and latest.md.
"""
