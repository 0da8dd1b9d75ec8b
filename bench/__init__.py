"""Benchmarks: every figure is measured next to its raw baseline, in the same run."""
