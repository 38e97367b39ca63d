"""The hf backend's optimizer: transformers' tf_keras AdamW with linear warm-up and decay."""

from __future__ import annotations

import transformers


def create_optimizer(learning_rate: float, num_train_steps: int, warmup_steps: int, weight_decay: float = 0.01):
    """AdamW (tf_keras) with linear warm-up from 0 and linear decay to 0 over `num_train_steps`; plain Adam at
    `weight_decay=0`.

    LayerNorm and bias weights are excluded from weight decay, as in BERT's original recipe. Call it inside the
    strategy's scope so the slot variables are distributed like the model's.

    Args:
        learning_rate: float. Peak learning rate, reached after `warmup_steps`.
        num_train_steps: int. Total optimizer steps (the decay reaches 0 there).
        warmup_steps: int. Steps of linear warm-up.
        weight_decay: float, default 0.01. Decoupled weight-decay rate.

    Returns:
        A tf_keras optimizer: `transformers.AdamWeightDecay`, or tf_keras `Adam` when `weight_decay` is 0 (as
        `transformers.create_optimizer` chooses).

    Raises:
        ValueError: for a non-positive learning rate or step count, or warm-up longer than training.

    Example:
    >>> optimizer = create_optimizer(5e-5, num_train_steps=100, warmup_steps=10)
    """
    if learning_rate <= 0 or num_train_steps <= 0:
        raise ValueError(
            f"`learning_rate` and `num_train_steps` must be positive. Received: `learning_rate={learning_rate}`, "
            f"`num_train_steps={num_train_steps}`"
        )
    if not 0 <= warmup_steps <= num_train_steps:
        raise ValueError(f"`warmup_steps` must lie in [0, {num_train_steps}]. Received: "
                         f"`warmup_steps={warmup_steps}`")
    optimizer, _ = transformers.create_optimizer(
        init_lr=learning_rate,
        num_train_steps=num_train_steps,
        num_warmup_steps=warmup_steps,
        weight_decay_rate=weight_decay,
    )
    return optimizer
