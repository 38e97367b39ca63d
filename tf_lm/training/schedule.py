"""`WarmupCosine`: linear warm-up to the peak learning rate, then cosine decay to a floor."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_lm")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(s) = peak·(s+1)/(warmup+1) for s < warmup, then cosine from peak to `min_learning_rate` at `decay_steps`.

    As nanoGPT's `get_lr`: step 0 already trains (lr > 0), and past `decay_steps` the rate stays at the floor.

    Args:
        learning_rate: float > 0. Peak rate, reached at the end of warm-up.
        min_learning_rate: float in [0, learning_rate]. Floor of the cosine.
        warmup_steps: int >= 0. Length of the linear warm-up.
        decay_steps: int > warmup_steps. Step at which the cosine reaches the floor (usually the run's length).

    Call args:
        step: int scalar (the optimizer's `iterations`, 0 for the first update).

    Returns:
        float32 scalar learning rate.

    Raises:
        ValueError: if the rates or steps are out of range.

    Example:
    >>> schedule = WarmupCosine(1e-3, 1e-4, warmup_steps=100, decay_steps=2000)
    >>> round(float(schedule(2000)), 6)
    0.0001
    """

    def __init__(self, learning_rate: float, min_learning_rate: float, warmup_steps: int, decay_steps: int):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0. Received: learning_rate={learning_rate}")
        if not 0 <= min_learning_rate <= learning_rate:
            raise ValueError(
                f"min_learning_rate must be in [0, learning_rate={learning_rate}]. "
                f"Received: min_learning_rate={min_learning_rate}"
            )
        if warmup_steps < 0 or decay_steps <= warmup_steps:
            raise ValueError(
                f"Need 0 <= warmup_steps < decay_steps. "
                f"Received: warmup_steps={warmup_steps}, decay_steps={decay_steps}"
            )
        self.learning_rate = float(learning_rate)
        self.min_learning_rate = float(min_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.learning_rate * (step + 1.0) / (self.warmup_steps + 1.0)
        progress = tf.clip_by_value(
            (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps), 0.0, 1.0
        )
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))  # 1 → 0
        decayed = self.min_learning_rate + cosine * (self.learning_rate - self.min_learning_rate)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "min_learning_rate": self.min_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
        }
