"""Benchmarks of the backorder cycle (not part of the importable product package)."""
