"""Imports TensorFlow quietly, and fails fast, in one sentence, when Keras is configured for another backend.

The configured backend is read the way Keras reads it (KERAS_BACKEND, then keras.json) before Keras is
imported, because importing Keras with, say, the JAX backend can itself fail when JAX is absent.
"""

import contextlib
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


@contextlib.contextmanager
def _stderr_discarded():
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow without its 8-13 start-up log lines (oneDNN, CUDA drivers, CPU features, cuInit).

    TF_CPP_MIN_LOG_LEVEL=2 (the default set here) silences TensorFlow's own INFO and WARNING logs, but the
    start-up lines come from C++ absl logging before it is initialised, which writes to stderr whatever the
    level; so stderr (file descriptor 2) is discarded while TensorFlow loads and finds its devices. Python
    errors still surface: they are raised after stderr is restored. Set TF_CPP_MIN_LOG_LEVEL=0 to see the lines.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet = level.strip() not in ("0", "1")
    with _stderr_discarded() if quiet else contextlib.nullcontext():
        import tensorflow as tf

        # Listing the physical devices runs the CUDA probe (its cuInit error line) now, without initialising the
        # runtime, so logical-device and threading settings made later still apply.
        tf.config.list_physical_devices()


def require_tensorflow_backend() -> None:
    backend = _configured_backend()
    if backend == "tensorflow":
        import_tensorflow_quietly()
        import keras

        backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            f"tf_lm needs Keras on the TensorFlow backend, but Keras is using '{backend}'; "
            "set KERAS_BACKEND=tensorflow (or edit ~/.keras/keras.json) and retry."
        )
