"""BERT's fine-tuning optimizer in Keras 3: AdamW with linear warm-up from 0 and linear decay to 0.

The same rule as transformers' `create_optimizer` (the `hf` backend's), so the two backends differ only in their
model code: lr(s) = peak·s/warmup during warm-up, then peak·(1 - (s - warmup)/(total - warmup)); betas 0.9/0.999,
epsilon 1e-8; no weight decay on LayerNorm weights and biases (every weight of fewer than two dimensions).
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_lm")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then linear decay to 0 at `total_steps`.

    Args:
        learning_rate: float > 0. Peak rate.
        warmup_steps: int >= 0.
        total_steps: int > warmup_steps.

    Call args:
        step: int scalar (the optimizer's `iterations`, 0 for the first update).

    Example:
    >>> float(LinearWarmupDecay(1e-4, 10, 110)(60))
    5e-05
    """

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int):
        if learning_rate <= 0 or total_steps <= 0:
            raise ValueError(f"`learning_rate` and `total_steps` must be positive. Received: "
                             f"`learning_rate={learning_rate}`, `total_steps={total_steps}`")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"`warmup_steps` must lie in [0, {total_steps}]. Received: `warmup_steps={warmup_steps}`")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.learning_rate * step / max(self.warmup_steps, 1)
        remaining = 1.0 - (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        decayed = self.learning_rate * tf.maximum(remaining, 0.0)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def create_optimizer(variables: list, learning_rate: float, total_steps: int, warmup_steps: int,
                     weight_decay: float = 0.01) -> keras.optimizers.AdamW:
    """A built Keras 3 AdamW over `variables` on the `LinearWarmupDecay` schedule.

    Call it inside the strategy's scope, after the model is built there.

    Args:
        variables: list of the trainable variables it updates.
        learning_rate: float. Peak learning rate, reached after `warmup_steps`.
        total_steps: int. Total optimizer steps (the decay reaches 0 there).
        warmup_steps: int. Steps of linear warm-up.
        weight_decay: float, default 0.01. Decoupled weight decay, on matrices only.

    Raises:
        ValueError: for a non-positive learning rate or step count, or warm-up longer than training.

    Example:
    >>> optimizer = create_optimizer(model.trainable_variables, 5e-5, total_steps=100, warmup_steps=10)
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=LinearWarmupDecay(learning_rate, warmup_steps, total_steps), weight_decay=weight_decay,
        beta_1=0.9, beta_2=0.999, epsilon=1e-8,
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
    optimizer.build(variables)
    return optimizer
