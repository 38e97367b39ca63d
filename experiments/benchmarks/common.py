"""Shared benchmark plumbing: one row type and one timing loop, so every section reports alike."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _shared_data_dir() -> Path:
    """The real datasets that tests and benchmarks read (never the package): $TF_LM_SHARED_DATA, else the
    `shared/data` beside the checkout, else the machine's /work/shared/data (a clone elsewhere still finds it)."""
    candidates = [os.environ.get("TF_LM_SHARED_DATA"), Path(__file__).resolve().parents[3] / "shared" / "data",
                  "/work/shared/data"]
    for candidate in filter(None, candidates):
        if Path(candidate).is_dir():
            return Path(candidate)
    return Path(candidates[1])


SHARED_DATA = _shared_data_dir()


def run_with_peak_rss(command: list[str], **run_kwargs) -> tuple[subprocess.CompletedProcess, float, float]:
    """`subprocess.run(command, **run_kwargs)`, with its wall seconds and the peak resident memory of `command`
    alone, in MiB.

    The peak comes from /usr/bin/time: a child forked from this process counts this process's pages until its
    exec, so its own rusage (`os.wait4`) would report at least our resident memory, not its own.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        process = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], **run_kwargs)
        seconds = time.perf_counter() - start
        # The peak in KiB is the last word: a failed command's report starts with its exit status.
        peak_kib = int(report.read().split()[-1])
    return process, seconds, peak_kib / 1024


@dataclasses.dataclass
class Row:
    """One benchmark result: ours beside the peer measured in the same run, and their ratio."""

    section: str
    name: str
    unit: str
    ours: float
    peer: float | None = None
    peer_name: str = ""
    target: str = ""
    notes: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.peer else self.ours / self.peer

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


def _timed_window(step: Callable[[], object], units_per_step: float, min_seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * units_per_step / elapsed


def best_rate(step: Callable[[], object], units_per_step: float, warmup: int = 2, repeats: int = 5,
              min_seconds: float = 1.0) -> float:
    """Units per second of `step` (which must block until done), best of `repeats` timed windows.

    Best-of rather than mean: on a shared 2-core machine the slow windows measure the neighbours.
    """
    return race({"step": step}, units_per_step, warmup, repeats, min_seconds)["step"]


def race(steps: dict[str, Callable[[], object]], units_per_step: float, warmup: int = 2, repeats: int = 5,
         min_seconds: float = 1.0) -> dict[str, float]:
    """Best units/s of each step, timing their windows in turn so that ours and the peer's see the same load."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            best[name] = max(best[name], _timed_window(step, units_per_step, min_seconds))
    return best


def hf_gpt2(config, dropout: float = 0.0):
    """HF `TFGPT2LMHeadModel` (a tf_keras model) with the same shape as an `LMConfig`: the peer we race."""
    import transformers

    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    model = transformers.TFGPT2LMHeadModel(hf_config)
    model(model.dummy_inputs)
    return model


def hf_xla_generate(model):
    """HF's `generate` of a `TFGPT2LMHeadModel`, XLA-compiled as HF documents for TF: returns
    `run(prompts [batch, time] int32, max_new_tokens, **sampling) -> ids`, the prompts without padding."""
    import tensorflow as tf

    # No end-of-text id, so no early stop: both sides make exactly max_new_tokens. A call's eos_token_id=None is
    # not enough: generate then falls back to generation_config's (GPT-2's 50256). Without one, no pad id is needed.
    model.generation_config.eos_token_id = None
    xla_generate = tf.function(model.generate, jit_compile=True)

    def run(prompts, max_new_tokens: int, **sampling):
        return xla_generate(tf.constant(prompts), attention_mask=tf.ones_like(prompts), max_new_tokens=max_new_tokens,
                            **sampling).numpy()

    return run


def hf_gpt2_train_step(model, learning_rate: float = 1e-3, beta_2: float = 0.999, grad_clip: float | None = None):
    """An XLA-compiled forward/backward/AdamW step for an HF TF model, as HF documents for TF training.

    `grad_clip` clips the global gradient norm, so the peer can do exactly the work our trainer's step does.
    """
    import tensorflow as tf
    import tf_keras

    optimizer = tf_keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=0.1, beta_2=beta_2)
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(inputs, training=True).logits)
        gradients = tape.gradient(loss, model.trainable_variables)
        if grad_clip:
            gradients, _ = tf.clip_by_global_norm(gradients, grad_clip)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step
