import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import check_layer

from tf_lm.layers import Dropout


def test_layer_contract(tmp_path):
    x = np.arange(10, dtype="float32").reshape(2, 5)
    outputs = check_layer(Dropout(0.5), x, tmp_path, trainable_weights=0)
    np.testing.assert_array_equal(outputs, x)  # not training: the identity


def test_drops_the_rate_and_scales_the_rest():
    keras.utils.set_random_seed(0)
    x = np.ones((7, 101, 13), "float32")  # an odd element count: the last 32-bit draw is used by half
    y = np.asarray(Dropout(0.1)(x, training=True))
    assert abs(np.mean(y == 0) - 0.1) < 0.005
    np.testing.assert_allclose(y[y != 0], 1 / 0.9, rtol=1e-6)


def test_masks_are_fresh_per_call_and_repeat_under_the_same_seed():
    x = np.ones((64, 64), "float32")
    keras.utils.set_random_seed(1)
    layer = Dropout(0.5)
    first, second = (np.asarray(layer(x, training=True)) for _ in range(2))
    assert not np.array_equal(first, second)
    keras.utils.set_random_seed(1)
    np.testing.assert_array_equal(np.asarray(Dropout(0.5)(x, training=True)), first)


def test_gradient_is_the_mask_and_xla_compiles_it():
    layer = Dropout(0.25, seed=3)

    @tf.function(jit_compile=True)
    def output_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            total = tf.reduce_sum(y)
        return y, tape.gradient(total, x)

    y, gradient = output_and_gradient(tf.constant(np.full((3, 5, 7), 2.0, "float32")))
    np.testing.assert_allclose(gradient.numpy(), y.numpy() / 2.0, rtol=1e-6)


def test_a_seeded_layer_rebuilt_from_its_config_draws_the_same_masks():
    layer = Dropout(0.5, seed=3)
    clone = Dropout.from_config(layer.get_config())
    x = np.ones((8, 8), "float32")
    np.testing.assert_array_equal(np.asarray(clone(x, training=True)), np.asarray(layer(x, training=True)))


def test_bfloat16_inputs_keep_their_dtype():
    y = Dropout(0.1, dtype="mixed_bfloat16")(np.ones((4, 8), "float32"), training=True)
    assert y.dtype == tf.bfloat16


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_rate_outside_zero_one_is_refused(rate):
    with pytest.raises(ValueError, match=f"rate={rate}"):
        Dropout(rate)


def test_no_random_state_at_rate_zero():
    assert Dropout(0.0).variables == [] and len(Dropout(0.1).variables) == 1  # as keras.layers.Dropout


def test_replicas_draw_masks_of_their_own(mirrored):
    with mirrored.scope():
        layer = Dropout(0.5, seed=3)
    # As the trainer runs a replica's step: an XLA program called from a Python replica function.
    compiled = tf.function(lambda: layer(tf.ones((64,)), training=True), jit_compile=True)
    masks = mirrored.experimental_local_results(tf.function(lambda: mirrored.run(lambda: compiled()))())
    # Independent masks differ in about half of the 64 elements.
    assert int(np.sum(masks[0].numpy() != masks[1].numpy())) > 10
