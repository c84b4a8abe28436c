"""Benchmarks and load generators. Each prints its figures; none is a timed test."""
