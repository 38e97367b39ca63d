"""Checks of the layers' constructor arguments, shared so that every layer refuses the same values alike.

As Keras's own layers do, a count must be an integer: `int()` would silently turn `num_heads=2.7` into 2.
"""

from __future__ import annotations

import operator


def positive_int(name: str, value) -> int:
    """`value` as an int (Python or numpy integers; not floats or booleans).

    Raises:
        ValueError: if `value` is not an integer >= 1, naming the argument.
    """
    try:
        count = operator.index(value)
    except TypeError:
        count = None
    if count is None or isinstance(value, bool) or count < 1:
        raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
    return count
