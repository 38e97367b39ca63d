"""Forward and training-step tokens/s of `TransformerLM` beside HF `TFGPT2LMHeadModel` at the same shapes.

Both sides run XLA-compiled `tf.function`s with float32 weights on the same random batch; the training
step is forward, sparse cross-entropy from logits, backward and an AdamW update.
"""

import keras
import numpy as np
import tensorflow as tf

from experiments.benchmarks.common import Row, hf_gpt2, hf_gpt2_train_step, race
from tf_lm import LMConfig, TransformerLM

# (name, config, batch): the two CPU shapes.
SHAPES = (
    ("4L/4H/128d, T=64, B=12", LMConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), 12),
    ("6L/6H/384d, T=256, B=8", LMConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384), 8),
)


def train_step(model, learning_rate=1e-3):
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=0.1)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(inputs, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step


def run(quick: bool):
    repeats, seconds = (2, 0.5) if quick else (5, 2.0)
    rows = []
    for name, config, batch in SHAPES:
        rng = np.random.default_rng(0)
        ids = tf.constant(rng.integers(0, config.vocab_size, (batch, config.block_size + 1)), tf.int32)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        tokens = batch * config.block_size
        ours, theirs = TransformerLM(config), hf_gpt2(config)

        forward = race(
            {
                "ours": lambda f=tf.function(lambda x: ours(x), jit_compile=True): f(inputs).numpy(),
                "hf": lambda f=tf.function(lambda x: theirs(x).logits, jit_compile=True): f(inputs).numpy(),
            },
            tokens, repeats=repeats, min_seconds=seconds,
        )
        rows.append(Row("model", f"forward {name}", "tokens/s", forward["ours"], forward["hf"],
                        "HF TFGPT2LMHeadModel XLA"))
        training = race(
            {
                "ours": lambda s=train_step(ours): s(inputs, targets).numpy(),
                "hf": lambda s=hf_gpt2_train_step(theirs): s(inputs, targets).numpy(),
            },
            tokens, repeats=repeats, min_seconds=seconds,
        )
        rows.append(Row("model", f"train step {name}", "tokens/s", training["ours"], training["hf"],
                        "HF TFGPT2LMHeadModel XLA", target=">= 1.3x"))
    return rows
