"""Simulated links for tests and benchmarks: network namespaces joined by a bridge, and a delay proxy."""
