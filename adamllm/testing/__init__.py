"""Tiny local models and procedural fixtures, for tests, the demo and benchmarks (no hub needed)."""
