"""`LMConfig`: the one small dataclass a `TransformerLM` is built from, and its named presets."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Shape and regularisation of a decoder-only Transformer language model.

    Args:
        vocab_size: int. Number of token ids the model reads and predicts.
        block_size: int. Longest context (number of positions) the model can attend over.
        n_layer: int. Number of Transformer blocks.
        n_head: int. Attention heads per block; must divide `n_embd`.
        n_embd: int. Width of the residual stream.
        dropout: float in [0, 1). Dropout on embeddings, attention weights and residual branches.
        layer_norm_epsilon: float. Epsilon of every LayerNormalization.

    Raises:
        ValueError: if a field is out of range or `n_embd` is not divisible by `n_head`.

    Example:
    >>> LMConfig.preset("nano", vocab_size=65).n_layer
    4
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LMConfig.{name} must be an integer >= 1. Received: {name}={value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"LMConfig.n_embd must be divisible by n_head; pick n_embd as a multiple of n_head. "
                f"Received: n_embd={self.n_embd}, n_head={self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LMConfig.dropout must be in [0, 1). Received: dropout={self.dropout}")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(
                f"LMConfig.layer_norm_epsilon must be > 0. Received: layer_norm_epsilon={self.layer_norm_epsilon}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LMConfig:
        """Returns the named preset with `overrides` applied, e.g. `LMConfig.preset("gpt2", dropout=0.1)`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown LMConfig preset {name!r}; choose one of {sorted(PRESETS)}.")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LMConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown LMConfig fields {unknown}; known fields are {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def non_embedding_params(self) -> int:
        """Parameters outside the embeddings: what the 6·N FLOPs-per-token estimate counts."""
        d = self.n_embd
        per_block = 4 * d  # two LayerNorms
        per_block += 3 * d * d + 3 * d + d * d + d  # fused QKV and output projection
        per_block += 4 * d * d + 4 * d + 4 * d * d + d  # MLP
        return self.n_layer * per_block + 2 * d  # final LayerNorm

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6·N_non-embedding + 12·L·d·T (PaLM appendix B)."""
        seq_len = self.block_size if seq_len is None else seq_len
        return 6 * self.non_embedding_params() + 12 * self.n_layer * self.n_embd * seq_len


# Character-level presets default to Tiny Shakespeare's 65 symbols; GPT-2 presets to its BPE vocabulary.
PRESETS: dict[str, LMConfig] = {
    "nano": LMConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    "char-small": LMConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    "gpt2": LMConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": LMConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": LMConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": LMConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
}
