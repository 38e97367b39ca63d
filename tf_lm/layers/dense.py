"""`Dense`: Keras's `Dense` whose LoRA path is evaluated factor by factor."""

from __future__ import annotations

import keras
from keras import ops


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

    def call(self, inputs, training=None):
        if not self.lora_enabled or self.quantization_mode is not None:
            return super().call(inputs, training=training)
        low_rank = ops.matmul(ops.matmul(inputs, self.lora_kernel_a), self.lora_kernel_b)
        x = ops.matmul(inputs, self._kernel) + (self.lora_alpha / self.lora_rank) * low_rank
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
