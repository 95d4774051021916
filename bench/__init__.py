"""Benchmarks: each module runs its baseline and ours in the same process and prints ratios."""
