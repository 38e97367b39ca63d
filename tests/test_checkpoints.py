"""`Checkpoints`: model variables (seed states included), optimizer and step round-trip; non-chiefs leave nothing."""

import os

import keras
import numpy as np

from tf_lm import LMConfig, TransformerLM
from tf_lm.training import Checkpoints, make_optimizer

CONFIG = LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.1)


def build():
    model = TransformerLM(CONFIG)
    return model, make_optimizer(model, 1e-2)


def one_step(model, optimizer):
    grads = [keras.ops.ones_like(v) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    model(np.zeros((1, 4), "int32"), training=True)  # advances the dropout seed generators


def test_round_trip_restores_weights_slots_seeds_and_step(tmp_path):
    model, optimizer = build()
    one_step(model, optimizer)
    saved = Checkpoints(str(tmp_path), model, optimizer)
    assert saved.restore() == 0  # nothing there yet
    saved.save(7)

    keras.utils.set_random_seed(123)  # a different initialisation and different seed-generator states
    other, other_optimizer = build()
    restored = Checkpoints(str(tmp_path), other, other_optimizer)
    assert restored.restore() == 7
    for a, b in zip(model.variables, other.variables):  # variables include the seed-generator states
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(optimizer.variables, other_optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keeps_the_latest_two(tmp_path):
    model, optimizer = build()
    checkpoints = Checkpoints(str(tmp_path), model, optimizer)
    for step in (2, 4, 6):
        checkpoints.save(step)
    assert checkpoints.latest.endswith("ckpt-6")
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".index")) == ["ckpt-4.index", "ckpt-6.index"]


def test_a_non_chief_writes_nothing_that_stays(tmp_path):
    model, optimizer = build()
    path = Checkpoints(str(tmp_path / "shared"), model, optimizer, chief=False).save(2)
    assert not os.path.exists(tmp_path / "shared")
    assert not os.path.exists(os.path.dirname(path))
