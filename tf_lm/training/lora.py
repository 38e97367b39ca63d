"""LoRA fine-tuning with Keras 3's own adapters (`Dense.enable_lora`, `Embedding.enable_lora`): only low-rank
factors train.

`enable_lora` freezes the whole model, then gives each attention and MLP projection (`qkv`, `output`,
`mlp_in`, `mlp_out`) factors A `[in, r]` and B `[r, out]`; the layer computes `x·W + (alpha / r)·(x·A)·B`
(`tf_lm.layers.dense.Dense`), which is `x·(W + (alpha / r)·A·B)` without a kernel-sized product. B starts
at zero, so a fresh adapter leaves the model's outputs unchanged. Optionally the token table gets factors the same
way (`[vocab, r]` and `[r, n_embd]`); the head is tied to it, so they adapt the output projection too. Saving
merges: Keras's `Dense.save_own_variables` and `Embedding.save_own_variables` write `W + (alpha / r)·A·B`, and
`TransformerLM` rebuilds its layers from `LMConfig` alone, so the saved `model.keras` is a plain model that
`keras.models.load_model` reads with no LoRA code.
"""

from __future__ import annotations

import math

import keras


def lora_targets(model: keras.Model) -> list[keras.layers.Dense]:
    """The Dense projections LoRA adapts: each block's `qkv`, `output`, `mlp_in` and `mlp_out`."""
    return [layer for block in model.blocks
            for layer in (block.attention.qkv_dense, block.attention.output_dense, block.mlp_in, block.mlp_out)]


def enable_lora(model: keras.Model, rank: int, alpha: float | None = None, train_norms: bool = False,
                embeddings: bool = False) -> list:
    """Freezes `model` and adds rank-`rank` LoRA factors to its projections; returns the frozen variables.

    Call it in the strategy's scope, after the base weights are in and before the optimizer is built (it
    optimises `model.trainable_variables`).

    Args:
        model: a built `TransformerLM`.
        rank: int >= 1. Rank r of the factors.
        alpha: float or None. The update is scaled by alpha / r; None means alpha = r (Keras's default).
        train_norms: bool, default False. Also train every LayerNorm's scale and offset.
        embeddings: bool, default False. Also give the token embedding table (and so the tied head) rank-`rank`
            factors.

    Returns:
        The model variables that no longer train (the base weights): a checkpoint needs only the others.

    Raises:
        ValueError: for a rank < 1 or alpha <= 0.

    Example:
    >>> frozen = enable_lora(model, rank=8)  # doctest: +SKIP
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1. Received: rank={rank!r}")
    if alpha is not None and not 0 < alpha < math.inf:  # refuses NaN, which fails every comparison
        raise ValueError(f"LoRA alpha must be > 0 (or None for alpha = rank). Received: alpha={alpha}")
    base = list(model.trainable_variables)
    for variable in base:
        variable.trainable = False
    for layer in lora_targets(model):
        layer.enable_lora(rank, lora_alpha=alpha)  # adds trainable A and B beside the (frozen) kernel and bias
    if embeddings:
        model.embedding.token_embedding.enable_lora(rank, lora_alpha=alpha)
    if train_norms:
        norms = [model.final_norm] + [norm for block in model.blocks for norm in (block.attention_norm, block.mlp_norm)]
        for norm in norms:
            norm.gamma.trainable = norm.beta.trainable = True
    return [variable for variable in base if not variable.trainable]
