"""The small dataclasses a run is built from: `LMConfig` (a `TransformerLM`'s shape) with its named presets, and
`TrainConfig` (everything else about a training run). Plain Python: flags map onto them without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from typing import Any


def _set_integer(config, name: str, low: int, high: int | None, rule: str) -> None:
    """Stores `config.name` as a Python int (a numpy integer too, so the config stays JSON), or raises ValueError
    `rule` if it is no integer (a bool, a float) or lies outside [low, high)."""
    value = getattr(config, name)
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low or (high is not None and number >= high):
        raise ValueError(f"{rule}. Received: `{name}={value!r}`")
    object.__setattr__(config, name, number)


def _set_number(config, name: str) -> None:
    """Stores `config.name` as a Python number (a numpy float as a float, so the config stays JSON), or raises
    ValueError if it is none (a bool, or a string from a JSON config)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: `{name}={value!r}`")
    if not isinstance(value, (int, float)):
        object.__setattr__(config, name, float(value))


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
            _set_integer(self, name, 1, None, f"`{name}` must be an integer >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"`n_embd` must be divisible by `n_head`; pick `n_embd` as a multiple of `n_head`. "
                f"Received: `n_embd={self.n_embd}`, `n_head={self.n_head}`"
            )
        # The range checks are written to refuse NaN, which fails every comparison.
        for name in ("dropout", "layer_norm_epsilon"):
            _set_number(self, name)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: `dropout={self.dropout}`")
        if not 0 < self.layer_norm_epsilon < math.inf:
            raise ValueError(
                f"`layer_norm_epsilon` must be > 0. Received: `layer_norm_epsilon={self.layer_norm_epsilon}`"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LMConfig:
        """Returns the named preset with `overrides` applied, e.g. `LMConfig.preset("gpt2", dropout=0.1)`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown LMConfig preset {name!r}; choose one of {sorted(PRESETS)}.")
        cls._check_fields(overrides)
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LMConfig:
        cls._check_fields(values)
        return cls(**values)

    @classmethod
    def _check_fields(cls, values: dict[str, Any]) -> None:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown LMConfig fields {unknown}; known fields are {sorted(known)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def non_embedding_params(self) -> int:
        """Parameters outside the embedding tables (GPT-2's 85M of 124M)."""
        d = self.n_embd
        per_block = 4 * d  # two LayerNorms
        per_block += 3 * d * d + 3 * d + d * d + d  # fused QKV and output projection
        per_block += 4 * d * d + 4 * d + 4 * d * d + d  # MLP
        return self.n_layer * per_block + 2 * d  # final LayerNorm

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) when every weight trains, the count MFU divides.

        6·N + 12·L·d·T (PaLM appendix B) with N = the non-embedding parameters plus the token table, which the
        output head multiplies by (it is tied): 6 FLOPs per weight per token, 2 forward, 2 for the input's
        gradient, 2 for the weight's. As nanoGPT's `estimate_mfu` counts it; the head is 6·d·V of it, 27% at
        GPT-2's shapes and most of a small model's with a large vocabulary. The position table is a lookup, not
        counted. For a weight that does not train (LoRA's base), which has no weight gradient, MFU counts 4
        (`tf_lm.training.trainer.training_flops_per_token`).

        Args:
            seq_len: int or None. Context length T trained on (None: `block_size`).

        Example:
        >>> LMConfig.preset("gpt2").flops_per_token()
        855166464
        """
        seq_len = self.block_size if seq_len is None else seq_len
        n = self.non_embedding_params() + self.n_embd * self.vocab_size
        return 6 * n + 12 * self.n_layer * self.n_embd * seq_len


# Character-level presets default to Tiny Shakespeare's 65 symbols; GPT-2 presets to its BPE vocabulary.
PRESETS: dict[str, LMConfig] = {
    "nano": LMConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    "char-small": LMConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    "gpt2": LMConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": LMConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": LMConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": LMConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
}

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# The names `tf_lm.distribute.resolve_strategy` takes; here, where no TensorFlow is loaded, so scripts can validate
# their --strategy flag before importing it.
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "tpu", "multi_worker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run that is not the model's shape.

    Args:
        dataset: str, default "builtin:pydoc". A `tf_lm.data.open_source` source, or `store:<dir>` (a token store).
        tokenizer: "char" (default) or "bpe".
        bpe_vocab_size: int or None. BPE vocabulary size (None: the data module's default); only with "bpe".
        batch_size: int, default 12. The global batch, split evenly over the replicas.
        steps: int, default 2000. Optimizer updates in the whole run.
        learning_rate: float, default 1e-3. Peak rate after warm-up.
        min_learning_rate: float, default 1e-4. Floor of the cosine decay, reached at step `steps`: the updates
            use the rates of steps 0 to `steps - 1`, so the last one is just above it (as nanoGPT's schedule).
        warmup_steps: int, default 100. Linear warm-up length.
        weight_decay: float, default 0.1. AdamW decoupled decay, on matrices only.
        beta1, beta2: floats, default 0.9 and 0.99.
        grad_clip: float, default 1.0. Clip the global gradient norm to this; 0 disables clipping.
        eval_every: int, default 250. Validate every this many steps (and at the last step).
        eval_steps: int, default 20. Validation batches per evaluation.
        checkpoint_every: int, default 250. Checkpoint every this many steps (and at the last step).
        log_every: int, default 10. Write a training row to the CSV/TensorBoard every this many steps.
        precision: "float32" (default), "mixed_bfloat16" or "mixed_float16".
        seed: int, default 0. Seeds the initialisation, dropout and the training windows.
        init_from: str or None. The pretrained checkpoint directory the run starts from (`tf_lm.pretrained`); the
            trainer gets its weights as `initial_state`, this names it in the run's config.
        lora_rank: int, default 0. With r >= 1 (and `init_from`), only rank-r LoRA factors of the attention and
            MLP projections train (`tf_lm.training.lora`); 0 trains every weight.
        lora_alpha: float or None. LoRA's update is scaled by alpha / r; None means alpha = r.
        lora_train_norms: bool, default False. With LoRA, also train the LayerNorms.
        lora_embeddings: bool, default False. With LoRA, also give the token embedding table (tied to the head)
            rank-r factors.

    Raises:
        ValueError: if a value is out of range.
    """

    dataset: str = "builtin:pydoc"
    tokenizer: str = "char"
    bpe_vocab_size: int | None = None
    batch_size: int = 12
    steps: int = 2000
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_steps: int = 20
    checkpoint_every: int = 250
    log_every: int = 10
    precision: str = "float32"
    seed: int = 0
    init_from: str | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_train_norms: bool = False
    lora_embeddings: bool = False

    def __post_init__(self):
        for name in ("batch_size", "steps", "warmup_steps", "eval_every", "eval_steps", "checkpoint_every",
                     "log_every", "seed", "lora_rank"):
            low, high, rule = {"warmup_steps": (0, None, ">= 0"), "seed": (0, 2**32, "in [0, 2**32)"),
                               "lora_rank": (0, None, ">= 0 (0: no LoRA)")}.get(name, (1, None, ">= 1"))
            _set_integer(self, name, low, high, f"`{name}` must be an integer {rule}")
        for name in ("learning_rate", "min_learning_rate", "weight_decay", "beta1", "beta2", "grad_clip"):
            _set_number(self, name)
        if self.lora_alpha is not None:
            _set_number(self, "lora_alpha")
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"Unknown `tokenizer={self.tokenizer!r}`; choose 'char' or 'bpe'.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown `precision={self.precision!r}`; choose one of {list(PRECISIONS)}.")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise ValueError(
                f"`warmup_steps` must be in [0, `steps`). Received: `warmup_steps={self.warmup_steps}`, "
                f"`steps={self.steps}`"
            )
        # Checked here as well as where they are used (the schedule, the optimizer), so that a run refuses them
        # before it prepares any data. NaN fails every comparison, so each test is written to refuse it.
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(
                f"`learning_rate` must be > 0 and finite. Received: `learning_rate={self.learning_rate}`"
            )
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(f"`min_learning_rate` must be in [0, `learning_rate`]. Received: "
                             f"`min_learning_rate={self.min_learning_rate}`, `learning_rate={self.learning_rate}`")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"`weight_decay` must be >= 0. Received: `weight_decay={self.weight_decay}`")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1). Received: `{name}={getattr(self, name)}`")
        if not 0 <= self.grad_clip < math.inf:
            raise ValueError(f"`grad_clip` must be >= 0 (0 disables it). Received: `grad_clip={self.grad_clip}`")
        if self.lora_rank and not self.init_from:
            raise ValueError(f"LoRA adapts a pretrained model; set `init_from`. Received: `lora_rank={self.lora_rank}`")
        if not self.lora_rank and (self.lora_alpha is not None or self.lora_train_norms or self.lora_embeddings):
            raise ValueError(
                f"`lora_alpha`, `lora_train_norms` and `lora_embeddings` only apply with `lora_rank` >= 1. Received: "
                f"`lora_alpha={self.lora_alpha}`, `lora_train_norms={self.lora_train_norms}`, "
                f"`lora_embeddings={self.lora_embeddings}`"
            )
        if self.lora_alpha is not None and not 0 < self.lora_alpha < math.inf:
            raise ValueError(f"`lora_alpha` must be > 0. Received: `lora_alpha={self.lora_alpha}`")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
