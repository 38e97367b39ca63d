"""Training benchmarks: tokens/s and MFU of the tf_lm step beside HF TFGPT2LMHeadModel, and the quality run.

Both steps do the same work: forward, backward, global-norm clipping and an AdamW update, float32, XLA
(`tf.function(jit_compile=True)`), on the same constant batch. MFU = FLOPs per token
(`LMConfig.flops_per_token`: 6·N + 12·L·d·T, N counting the tied head's table) × tokens/s over the fp32 matmul peak
measured in the same run (a 2048³ matmul under XLA).

The quality row runs the README's quality command (nano char-level on Tiny Shakespeare for 2000 steps, issue #4's
fixed settings plus our beta1 0.6 and weight decay 0) with `experiments.train_lm` (a subprocess, timed wall clock,
evaluations included) and scores the whole validation split.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from experiments.benchmarks.common import SHARED_DATA, Row, hf_gpt2, hf_gpt2_train_step, race
from tf_lm.configs import LMConfig
from tf_lm.distribute import resolve_strategy
from tf_lm.training import TrainConfig, Trainer, measure_matmul_peak

SHAPES = {  # name: (n_layer, n_head, n_embd, block_size, batch_size)
    "a 4/4/128 T64 B12": (4, 4, 128, 64, 12),
    "b 6/6/384 T256 B8": (6, 6, 384, 256, 8),
}
VOCAB = 65
REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
QUALITY_FLAGS = [
    "--preset=nano", f"--dataset=text:{SHAKESPEARE}", "--tokenizer=char", "--steps=2000", "--batch_size=12",
    "--block_size=64", "--learning_rate=1e-3", "--min_learning_rate=1e-4", "--warmup_steps=100", "--beta2=0.99",
    "--dropout=0", "--beta1=0.6", "--weight_decay=0", "--eval_every=250", "--eval_steps=20", "--checkpoint_every=500",
]


def _batch(block_size, batch_size):
    ids = tf.random.stateless_uniform((batch_size, block_size + 1), (0, 0), 0, VOCAB, tf.int32)
    return ids[:, :-1], ids[:, 1:]


def ours_step(config: LMConfig, batch_size: int, model_dir: str):
    inputs, targets = _batch(config.block_size, batch_size)
    trainer = Trainer.from_config(config, TrainConfig(batch_size=batch_size, steps=10**6), resolve_strategy("cpu"),
                                  model_dir, verbose=False)
    iterator = iter(tf.data.Dataset.from_tensors((inputs, targets)).repeat())
    return lambda: float(trainer.train_step(iterator)[0])


def side_by_side(config: LMConfig, batch_size: int, rounds: int) -> tuple[float, float]:
    """Best tokens/s of ours and the peer (same clipping and betas), timed in alternating windows."""
    inputs, targets = _batch(config.block_size, batch_size)
    with tempfile.TemporaryDirectory() as model_dir:
        peer = hf_gpt2_train_step(hf_gpt2(config), beta_2=0.99, grad_clip=1.0)
        rates = race(
            {"ours": ours_step(config, batch_size, model_dir), "hf": lambda: float(peer(inputs, targets))},
            batch_size * config.block_size, repeats=rounds,
        )
    return rates["ours"], rates["hf"]


def quality_row() -> Row:
    from experiments.evaluate_lm import evaluate_split
    from tf_lm.artifacts import load_model_dir
    from tf_lm.data import prepare_store

    with tempfile.TemporaryDirectory() as model_dir:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "experiments.train_lm", f"--model_dir={model_dir}", *QUALITY_FLAGS],
                       cwd=REPO, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.perf_counter() - start
        model, tokenizer = load_model_dir(model_dir)
        store = prepare_store(f"text:{SHAKESPEARE}", os.path.join(model_dir, "eval_store"), tokenizer=tokenizer)
        loss = evaluate_split(model, tokenizer, store, "validation")["loss"]
    return Row("training", "nano char Tiny Shakespeare 2000 steps: val loss", "nats/char", loss,
               target="<= 1.88 in < 160 s", notes=f"wall {wall:.0f} s incl. start-up and evaluations; whole val split")


def run(quick: bool) -> list[Row]:
    rounds = 2 if quick else 6
    peak = measure_matmul_peak()
    rows = [Row("training", "fp32 matmul peak (2048³, XLA)", "GFLOP/s", peak / 1e9)]
    for name, (n_layer, n_head, n_embd, block_size, batch_size) in SHAPES.items():
        config = LMConfig(vocab_size=VOCAB, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        ours, peer = side_by_side(config, batch_size, rounds)
        flops = config.flops_per_token(block_size)
        rows.append(Row("training", f"train tokens/s ({name})", "tokens/s", ours, peer, "HF TFGPT2LMHeadModel XLA",
                        target=">= 1.3x"))
        rows.append(Row("training", f"train MFU ({name})", "fraction of peak", flops * ours / peak,
                        flops * peer / peak, "HF TFGPT2LMHeadModel XLA"))
    if not quick and SHAKESPEARE.is_file():
        rows.append(quality_row())
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    for row in run(quick="--quick" in sys.argv):
        print(row)
