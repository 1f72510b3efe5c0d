"""Benchmarks: rx-slurm against doing the same thing by hand with Slurm, side by side in one run.

`python -m bench` (or `make bench`) runs every benchmark on the local test cluster; see
bench/README.md. Each benchmark measures rx-slurm and its baseline in the same run and writes
bench/results/<name>.json; bench/results/latest.md is the README's table.
"""
