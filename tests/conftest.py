"""Shared fixtures: a seeded run per test, `check_layer` (the one way every layer is tested) and `run_module`
(the one way a test runs an `experiments` script as a user would)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)
    yield 0


@pytest.fixture(autouse=True)
def float32_policy():
    """A test that switches to mixed precision must not leak it into the next test."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def check_layer(layer, inputs, tmp_path, trainable_weights, **call_kwargs):
    """Config round-trip, eager call, symbolic call, one `fit` step and `.keras` save/load of `layer`; its number
    of trainable weights; and, built from its config under `mixed_bfloat16` and `mixed_float16`, that every
    sublayer has that policy (layers pass their own down, so a per-layer policy does not depend on the global one),
    every weight stays float32 and float outputs are in the policy's compute dtype."""
    outputs = np.asarray(layer(inputs, **call_kwargs))
    assert len(layer.trainable_weights) == trainable_weights

    for policy, compute_dtype in (("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")):
        mixed = layer.__class__.from_config({**layer.get_config(), "dtype": policy})
        mixed_outputs = mixed(inputs, **call_kwargs)
        assert {sublayer.dtype_policy.name for sublayer in mixed._flatten_layers()} == {policy}
        assert {weight.dtype for weight in mixed.weights} <= {"float32"}
        if np.issubdtype(outputs.dtype, np.floating):
            assert mixed_outputs.dtype == compute_dtype, (policy, mixed_outputs.dtype)

    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(inputs, **call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(clone(inputs, **call_kwargs)), outputs, atol=1e-6)

    symbolic_in = keras.Input(shape=inputs.shape[1:], dtype=str(inputs.dtype), batch_size=None)
    wrapper = keras.Model(symbolic_in, layer(symbolic_in, **call_kwargs))
    assert tuple(wrapper.output.shape[1:]) == outputs.shape[1:]

    wrapper.compile(optimizer="sgd", loss="mse")
    wrapper.fit(inputs, np.zeros_like(outputs), epochs=1, batch_size=len(inputs), verbose=0)

    path = str(tmp_path / "layer.keras")
    wrapper.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(restored(inputs)), np.asarray(wrapper(inputs)), atol=1e-6)
    return outputs


def script_environment(**extra):
    """The environment a script runs in: the repo importable, TensorFlow's C++ logging quiet, then `extra`."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), **extra}


def run_module(module, *args, env=None, timeout=300):
    """Runs `python -m module *args` from the repo root; returns the finished process with text output."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=script_environment(**(env or {})),
                           capture_output=True, text=True, timeout=timeout)


def failure_line(result):
    """The last stderr line of a script that must have failed cleanly: non-zero exit, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def free_port() -> int:
    """A TCP port nothing listens on now, for a local multi-worker cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_of(directory) -> dict[str, bytes]:
    """Every file under `directory`, by relative path, with its bytes: two stores are equal when these are."""
    return {os.path.relpath(os.path.join(root, name), directory): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(directory) for name in names}


def copy_to_tensorflow_filesystem(local, remote: str) -> None:
    """Copies the directory tree `local` to `remote`, a path of a TensorFlow filesystem (`ram://...`)."""
    import tensorflow as tf

    for directory, _, files in tf.io.gfile.walk(str(local)):
        target = remote + directory[len(str(local)):]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{directory}/{name}", f"{target}/{name}", overwrite=True)
