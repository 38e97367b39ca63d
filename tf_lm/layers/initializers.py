"""One initializer object per weight: Keras 3 initializers without their own seed repeat their values."""

import keras


def clone_initializer(initializer):
    """A fresh copy of `initializer` that draws its own values.

    An unseeded Keras 3 initializer fixes a seed when it is constructed and returns the same tensor on every
    call, so one instance shared by several weights starts them all identical. A copy made from the config
    draws a new seed (from Python's `random`, which `keras.utils.set_random_seed` seeds, so runs stay
    reproducible); a seeded initializer keeps its seed, as its author asked.

    Args:
        initializer: a `keras.initializers.Initializer`, or anything `keras.initializers.get` accepts.

    Returns:
        A new `keras.initializers.Initializer` of the same class and config.
    """
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())
