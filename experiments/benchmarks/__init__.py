"""Benchmark sections run by `python -m experiments.benchmark`: each module exposes `run(quick) -> list[Row]`."""
