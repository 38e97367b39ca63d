"""`make_optimizer`: AdamW that decays only the matrices of the network, as GPT-2 / nanoGPT train."""

from __future__ import annotations

import keras

from tf_lm.configs import PRECISIONS


def no_decay_variables(model: keras.Model) -> list:
    """Trainable variables exempt from weight decay: biases, LayerNorm scales/offsets (< 2-D) and embeddings.

    Decaying a LayerNorm gain towards 0 or a bias towards 0 fights the normalisation rather than regularising,
    and embeddings are lookups (nanoGPT's `configure_optimizers` draws the same line at >= 2-D weights; we also
    spare the embedding tables, as the issue asks). With LoRA on the token table, its factors are spared as the
    table is: decaying them would pull the table's update, not a projection's, towards 0.
    """
    return [v for v in model.trainable_variables if len(v.shape) < 2 or "embedding" in v.path]


def make_optimizer(model: keras.Model, learning_rate, weight_decay: float = 0.1, beta1: float = 0.9,
                   beta2: float = 0.95, precision: str = "float32") -> keras.optimizers.Optimizer:
    """Returns a built `keras.optimizers.AdamW` for `model` (wrapped in loss scaling for mixed_float16).

    Call inside the strategy's scope, after the model is built there. Gradient clipping is the trainer's job:
    Keras would clip each replica's gradients before they are summed, which is not the global norm.

    Args:
        model: the built Keras model whose `trainable_variables` are optimised.
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: float >= 0, default 0.1. Decoupled decay, on matrices only (see `no_decay_variables`).
        beta1: float, default 0.9.
        beta2: float, default 0.95.
        precision: "float32", "mixed_bfloat16" or "mixed_float16". float16 gradients underflow without loss
            scaling, so mixed_float16 gets a `keras.optimizers.LossScaleOptimizer`; bfloat16 has float32's range
            and needs none.

    Returns:
        A built optimizer whose variables exist, so a checkpoint can be restored into it at once.

    Raises:
        ValueError: for a negative weight decay, betas outside [0, 1) or an unknown precision.

    Example:
    >>> optimizer = make_optimizer(TransformerLM(LMConfig.preset("nano")), 1e-3)
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0. Received: weight_decay={weight_decay}")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {list(PRECISIONS)}.")
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta1, beta_2=beta2
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer
