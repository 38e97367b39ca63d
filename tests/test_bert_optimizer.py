"""`tf_lm.bert.optimizer`: the warm-up/decay schedule and AdamW's weight decay on matrices only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_lm.bert.optimizer import LinearWarmupDecay, create_optimizer


def test_linear_warmup_then_linear_decay_to_zero():
    schedule = LinearWarmupDecay(1e-4, 10, 110)
    rates = {step: float(schedule(step)) for step in (0, 5, 10, 60, 109, 110, 200)}
    # peak * s / warmup, then peak * (1 - (s - warmup) / (total - warmup)), never below 0
    expected = {0: 0.0, 5: 5e-5, 10: 1e-4, 60: 5e-5, 109: 1e-6, 110: 0.0, 200: 0.0}
    assert rates == pytest.approx(expected, rel=1e-5, abs=1e-12)  # float32


def test_weight_decay_shrinks_matrices_and_spares_biases_and_layernorm():
    dense = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="ones")
    norm = keras.layers.LayerNormalization(beta_initializer="ones")
    dense.build((None, 2))
    norm.build((None, 3))
    variables = dense.trainable_variables + norm.trainable_variables  # kernel (2, 3); bias, gamma, beta (3,)
    optimizer = create_optimizer(variables, 0.1, total_steps=10, warmup_steps=0, weight_decay=0.5)
    optimizer.apply_gradients([(tf.zeros(v.shape), v) for v in variables])  # no gradient: only the decay moves
    kernel, *vectors = [np.asarray(v) for v in variables]
    np.testing.assert_allclose(kernel, np.full((2, 3), 1 - 0.1 * 0.5), rtol=1e-6)  # decayed by lr * weight_decay
    for vector in vectors:
        np.testing.assert_array_equal(vector, np.ones(3))
