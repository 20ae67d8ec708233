"""Benchmark fixtures shared by the test modules."""
