"""`Dense`: Keras's `Dense` whose LoRA path is evaluated factor by factor."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def _low_rank_update_matmul(inputs, kernel, lora_a, lora_b, scale: float, kernel_trains: bool):
    """`x·W + scale·(x·A)·B` as one matmul, `[x, scale·x·A]·[W; B]`, with gradients through the factors.

    One matmul makes the sum a single tensor: written as two products and an add, XLA fuses the add into every
    elementwise consumer (GELU after `mlp_in`, and GELU's gradient), so a step keeps both products alive
    for the backward pass instead of their sum, one extra output-sized activation per layer. A frozen kernel
    (`kernel_trains` false, as `enable_lora` leaves it) gets no gradient, so the backward forms no kernel-sized
    product, and the stacked `[W; B]` lives only for the forward matmul.
    """
    @tf.custom_gradient
    def matmul(inputs, kernel, lora_a, lora_b):
        rows = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])
        down = scale * tf.matmul(rows, lora_a)
        outputs = tf.matmul(tf.concat([rows, down], axis=-1), tf.concat([kernel, lora_b], axis=0))
        outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], tf.shape(kernel)[-1:]], axis=0))

        def grad(upstream):
            upstream_rows = tf.reshape(upstream, [-1, tf.shape(upstream)[-1]])
            down_grad = tf.matmul(upstream_rows, lora_b, transpose_b=True)
            inputs_grad = (tf.matmul(upstream_rows, kernel, transpose_b=True)
                           + scale * tf.matmul(down_grad, lora_a, transpose_b=True))
            kernel_grad = tf.matmul(rows, upstream_rows, transpose_a=True) if kernel_trains else None
            return (tf.reshape(inputs_grad, tf.shape(inputs)), kernel_grad,
                    scale * tf.matmul(rows, down_grad, transpose_a=True),
                    tf.matmul(down, upstream_rows, transpose_a=True))

        return outputs, grad

    return matmul(inputs, kernel, lora_a, lora_b)


@keras.saving.register_keras_serializable(package="tf_lm")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` that computes an enabled LoRA update as `x·W + (alpha / r)·(x·A)·B`.

    Keras's own `Dense.enable_lora` creates the factors, freezes the kernel and merges on save; its forward pass
    forms the merged kernel `W + (alpha / r)·A·B` at every call, so each step holds a kernel-sized copy and its
    kernel-sized gradient, the memory LoRA exists to save. Multiplying through the factors gives the same outputs
    and back-propagates through `[tokens, r]` tensors only. Without LoRA this is `keras.layers.Dense` itself.

    Example:
    >>> layer = Dense(4)
    >>> layer.build((None, 3))
    >>> layer.enable_lora(2)
    >>> tuple(layer(ops.ones((5, 3))).shape)
    (5, 4)
    """

    def _get_kernel_with_merged_lora(self):
        # What a save writes. Keras casts its merge to the compute dtype, so under a mixed policy the float32
        # kernel would be saved rounded to bfloat16 or float16: merged here in the variable's own dtype instead.
        if not self.lora_enabled or self.quantization_mode is not None:
            return super()._get_kernel_with_merged_lora()
        scale = self.lora_alpha / self.lora_rank
        return ops.add(self._kernel, scale * ops.matmul(self.lora_kernel_a, self.lora_kernel_b)), None, None

    def call(self, inputs, training=None):
        if not self.lora_enabled or self.quantization_mode is not None:
            return super().call(inputs, training=training)
        # Read in the layer's autocast scope, so a mixed policy hands the matmul its compute dtype.
        variables = (self._kernel, self.lora_kernel_a, self.lora_kernel_b)
        kernel, lora_a, lora_b = (tf.convert_to_tensor(variable) for variable in variables)
        x = _low_rank_update_matmul(inputs, kernel, lora_a, lora_b, self.lora_alpha / self.lora_rank,
                                    kernel_trains=self._kernel.trainable)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
