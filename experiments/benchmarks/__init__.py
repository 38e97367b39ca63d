"""Benchmark sections run by `python -m experiments.benchmark`: each module exposes `run(quick) -> list[Row]`."""

import pkgutil

# Every module here but the shared plumbing is a section.
SECTIONS = tuple(m.name for m in pkgutil.iter_modules(__path__) if m.name != "common")
