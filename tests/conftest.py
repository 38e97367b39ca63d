"""Shared fixtures: a seeded run per test, `check_layer` (the one way every layer is tested) and `run_module`
(the one way a test runs an `experiments` script as a user would)."""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's compilation is most of these tiny-shape tests' time; at LLVM -O1 instead of its default -O2 it takes about a
# third less, and a 20-step run of `train_lm` ended with the same weights bit for bit at both levels (at -O0 they
# differed). Scripts the tests run inherit it; set XLA_FLAGS (even empty) for XLA's own default.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
# One intra-op thread per TensorFlow process: two pytest workers (and the scripts they start) share the machine's two
# cores, and TensorFlow's default of a thread per core in each process made them contend. The whole suite took 479 s
# (854 s of CPU) with it, 582 s (1,026 s of CPU) without, on this 2-core machine; tiny shapes gain nothing from a
# second thread. Set TF_NUM_INTRAOP_THREADS for TensorFlow's default.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

# tf_lm before Keras, which imports TensorFlow: tf_lm makes that import quiet.
import tf_lm  # noqa: E402, F401, I001
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs in every test process, as on a two-device machine, so a mirrored strategy (two replicas) runs
# in the test itself. They must be set before TensorFlow initialises its devices, which nothing above does; the one
# device of the default and "cpu" strategies is unchanged.
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_lm.configs import LMConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30
# The model of `tf_lm_dir` and `hf_dir`: two blocks 16 wide, 16 positions.
CONFIG = LMConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="session")
def mirrored():
    """The process's one mirrored strategy over its two logical CPUs. One, as in a training process: each
    strategy numbers its collective ops from the same start, so a second one's all-reduces would meet the first's
    in TensorFlow's collective executor (a shape mismatch)."""
    from tf_lm.distribute import resolve_strategy

    return resolve_strategy("mirrored")


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


def as_from_a_terminal(command: list[str]) -> list[str]:
    """`command` started with Ctrl-C's default action, as a terminal starts it: a background job (`make test &`, or
    a CI runner's) inherits SIGINT ignored, and a Python started so never raises KeyboardInterrupt."""
    restore = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", restore, *command]


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


def tensorboard_values(directory) -> dict[tuple[str, int], list[float]]:
    """{(tag, step): its values} over every event file in `directory`, as TensorBoard reads them."""
    import tensorflow as tf

    values = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values.setdefault((value.tag, event.step), []).append(float(tf.make_ndarray(value.tensor)))
    return values


def copy_to_tensorflow_filesystem(local, remote: str) -> None:
    """Copies the directory tree `local` to `remote`, a path of a TensorFlow filesystem (`ram://...`)."""
    import tensorflow as tf

    for directory, _, files in tf.io.gfile.walk(str(local)):
        target = remote + directory[len(str(local)):]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{directory}/{name}", f"{target}/{name}", overwrite=True)


def emit_only(model, token_id: int):
    """Makes `model` (a `TransformerLM`) predict `token_id` after any input and returns it: its final LayerNorm
    outputs its bias alone, one direction, which only that id's embedding has, so the tied head scores it 1 and
    every other id 0."""
    width = model.config.n_embd
    direction = np.eye(width, dtype="float32")[0]
    table = np.zeros((model.config.vocab_size, width), "float32")
    table[token_id] = direction
    model.embedding.token_embeddings.assign(table)
    model.final_norm.gamma.assign(np.zeros(width, "float32"))
    model.final_norm.beta.assign(direction)
    return model


def tf_lm_dir(path):
    """A tf_lm model directory with random (not freshly initialised) weights."""
    from tf_lm import TransformerLM
    from tf_lm.artifacts import save_model_dir
    from tf_lm.data import CharTokenizer

    tokenizer = CharTokenizer.from_text(TEXT)
    model = TransformerLM(dataclasses.replace(CONFIG, vocab_size=tokenizer.vocab_size))
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(np.asarray(weight) + rng.normal(scale=0.1, size=weight.shape).astype("float32"))
    save_model_dir(str(path), model, tokenizer)
    return model, tokenizer


def hf_dir(path, vocab_size=None):
    """What HF's TF `save_pretrained` writes (TF tensor names), plus GPT-2's vocab.json + merges.txt."""
    import transformers

    from tf_lm.data import BPETokenizer

    tokenizer = BPETokenizer.train(TEXT, vocab_size=300)
    config = transformers.GPT2Config(vocab_size=vocab_size or tokenizer.vocab_size, n_positions=16, n_embd=16,
                                     n_layer=2, n_head=2)
    hf = transformers.TFGPT2LMHeadModel(config)
    hf(hf.dummy_inputs)
    # Random biases and LayerNorm parameters too, and weights large enough that a swapped LayerNorm or another GELU
    # moves the logits past the tests' tolerances.
    rng = np.random.default_rng(0)
    for weight in hf.weights:
        weight.assign(np.asarray(weight) + rng.normal(scale=0.3, size=weight.shape).astype("float32"))
    hf.save_pretrained(str(path), safe_serialization=True)
    tokenizer.to_hf().model.save(str(path))
    return hf, tokenizer


# A tiny model on the builtin corpus: steps take milliseconds, so process start-up dominates.
TINY = ["--preset=nano", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--warmup_steps=1", "--eval_every=1000", "--eval_steps=1", "--log_every=50"]


def train_lm_command(model_dir, *extra):
    """`python -m experiments.train_lm` on the tiny model, with `extra` flags."""
    return [sys.executable, "-m", "experiments.train_lm", f"--model_dir={model_dir}", *TINY, *extra]


def run_command(args, **env):
    """Runs `args` from the repo root as `run_module` does; `env` adds to the environment."""
    return subprocess.run(args, cwd=REPO, env=script_environment(**env), capture_output=True, text=True, timeout=240)
