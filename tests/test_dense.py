"""`tf_lm.layers.dense.Dense`: Keras's Dense, with its LoRA update multiplied through the factors."""

import keras
import numpy as np
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
    return layer


def test_factored_lora_equals_keras_merged_kernel_in_outputs_and_gradients():
    ours, keras_dense = _with_lora(Dense), _with_lora(keras.layers.Dense)
    keras_dense.set_weights(ours.get_weights())
    results = []
    for layer in (ours, keras_dense):
        with tf.GradientTape() as tape:
            y = layer(X)
            loss = tf.reduce_sum(y * tf.sin(y))
        results.append([y] + tape.gradient(loss, [layer.lora_kernel_a, layer.lora_kernel_b]))
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_without_lora_it_is_a_keras_dense(tmp_path):
    check_layer(Dense(4), X, tmp_path, trainable_weights=2)
