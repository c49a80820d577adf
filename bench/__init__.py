"""Tally benchmarks: `uv run python -m bench` (see docs/benchmarks.md)."""
