"""`tf_lm.layers.dense.Dense`: Keras's Dense, with its LoRA update multiplied through the factors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import check_layer

from tf_lm.layers.dense import Dense

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 5, 6)).astype("float32")


def _with_lora(layer_class):
    layer = layer_class(4, activation="gelu", name="projection")
    layer.build(X.shape)
    layer.enable_lora(2, lora_alpha=3.0)
    layer.lora_kernel_b.assign(RNG.normal(scale=0.5, size=layer.lora_kernel_b.shape).astype("float32"))
    layer.bias.assign(RNG.normal(size=layer.bias.shape).astype("float32"))  # a dropped bias cannot hide behind 0
    return layer


@pytest.mark.parametrize("jit_compile", [False, True])
def test_factored_lora_equals_keras_merged_kernel_in_outputs_and_gradients(jit_compile):
    ours, keras_dense = _with_lora(Dense), _with_lora(keras.layers.Dense)
    keras_dense.set_weights(ours.get_weights())
    inputs = tf.constant(X)

    @tf.function(jit_compile=jit_compile)
    def outputs_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs)
            loss = tf.reduce_sum(y * tf.sin(y))
        return [y] + tape.gradient(loss, [inputs, layer.lora_kernel_a, layer.lora_kernel_b])

    for ours_value, keras_value in zip(outputs_and_gradients(ours), outputs_and_gradients(keras_dense)):
        np.testing.assert_allclose(np.asarray(ours_value), np.asarray(keras_value), rtol=1e-5, atol=1e-5)


def test_a_kernel_made_trainable_again_gets_keras_gradient():
    ours, keras_dense = _with_lora(Dense), _with_lora(keras.layers.Dense)
    keras_dense.set_weights(ours.get_weights())
    gradients = []
    for layer in (ours, keras_dense):
        layer._kernel.trainable = True
        with tf.GradientTape() as tape:
            y = layer(X)
            loss = tf.reduce_sum(y * tf.sin(y))
        gradients.append(tape.gradient(loss, layer._kernel))
    np.testing.assert_allclose(np.asarray(gradients[0]), np.asarray(gradients[1]), rtol=1e-5, atol=1e-5)


def test_factored_lora_gives_the_frozen_kernel_no_gradient():
    layer = _with_lora(Dense)
    with tf.GradientTape() as tape:
        tape.watch(layer._kernel.value)  # frozen, so unwatched by default: watched, it still gets none
        loss = tf.reduce_sum(layer(X))
    assert tape.gradient(loss, layer._kernel.value) is None


def test_without_lora_it_is_a_keras_dense(tmp_path):
    check_layer(Dense(4), X, tmp_path, trainable_weights=2)
