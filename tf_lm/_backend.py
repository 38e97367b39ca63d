"""Fails fast, in one sentence, when Keras is configured for a backend other than TensorFlow."""

import keras


def require_tensorflow_backend() -> None:
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            f"tf_lm needs Keras on the TensorFlow backend, but Keras is using '{backend}'; "
            "set KERAS_BACKEND=tensorflow (or edit ~/.keras/keras.json) and retry."
        )
