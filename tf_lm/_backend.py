"""Fails fast, in one sentence, when Keras is configured for a backend other than TensorFlow.

The configured backend is read the way Keras reads it (KERAS_BACKEND, then keras.json) before Keras is
imported, because importing Keras with, say, the JAX backend can itself fail when JAX is absent.
"""

import json
import os


def _configured_backend() -> str:
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(keras_home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def require_tensorflow_backend() -> None:
    backend = _configured_backend()
    if backend == "tensorflow":
        import keras

        backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            f"tf_lm needs Keras on the TensorFlow backend, but Keras is using '{backend}'; "
            "set KERAS_BACKEND=tensorflow (or edit ~/.keras/keras.json) and retry."
        )
