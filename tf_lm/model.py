"""`TransformerLM`: a GPT-2 style decoder-only language model trained on P(W) = Π P(w_i | w_1..w_{i-1})."""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tf_lm.configs import LMConfig
from tf_lm.layers import Dropout, TiedLMHead, TokenAndPositionEmbedding, TransformerBlock


def _static_shape(x):
    """`x`'s shape as known before running (None for an unknown size), or None if even its rank is unknown."""
    try:
        return tuple(x.shape if hasattr(x, "shape") else np.shape(x))
    except ValueError:  # a TensorShape of unknown rank
        return None


def _shapes_agree(shape, expected):
    """Whether `shape` can be `expected`: the same rank, and equal sizes where both are known."""
    return len(shape) == len(expected) and all(a is None or b is None or a == b for a, b in zip(shape, expected))


def _check_integers(name, x):
    """Refuses a non-integer dtype (a gather or slice would silently truncate 1.7 to 1); only the dtype is read."""
    dtype = tf.as_dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)  # a bool's is no integer dtype
    if not dtype.is_integer:
        raise ValueError(f"{name} must be integers. Received: {name} of dtype {dtype.name}")


def cache_slots(cache):
    """The number of slots of a KV cache from `TransformerLM.init_cache`: an int when static, else a scalar tensor."""
    values = cache[0][1]  # (B·H, S, Dh)
    return values.shape[1] if values.shape[1] is not None else ops.shape(values)[1]


@keras.saving.register_keras_serializable(package="tf_lm")
class TransformerLM(keras.Model):
    """Token + position embeddings, `n_layer` pre-LN blocks, a final LayerNorm and a tied head.

    Args:
        config: `LMConfig` (or its dict form, as stored by `get_config`).

    Call args:
        token_ids: int tensor `[batch, time]`, `time <= config.block_size`.
        padding_mask: optional `[batch, time]`, 1 for real tokens.
        position_ids: optional int `[batch, time]` positions in `[0, block_size)` (left-padded rows); default
            `0..time-1`.
        training: bool, default False.

    Returns:
        float32 logits `[batch, time, vocab_size]`: row t is the distribution of token t+1.

    Raises:
        ValueError: if an argument has the wrong dtype or shape, or (where known before running, as eagerly) an id
            or position is out of range.

    Example:
    >>> model = TransformerLM(LMConfig.preset("nano", vocab_size=65))
    >>> model(ops.zeros((2, 8), "int32")).shape
    (2, 8, 65)
    """

    def __init__(self, config: LMConfig | dict, **kwargs):
        if isinstance(config, str):
            raise TypeError(f"TransformerLM takes an LMConfig, not a preset name; use "
                            f"TransformerLM(LMConfig.preset({config!r})). Received: config={config!r}")
        if not isinstance(config, (LMConfig, dict)):
            raise TypeError(f"TransformerLM takes an LMConfig or its dict form. Received: config={config!r}")
        trainable = kwargs.pop("trainable", True)  # set below, once the sublayers exist
        super().__init__(**kwargs)
        self.config = LMConfig.from_dict(config) if isinstance(config, dict) else config
        cfg = self.config
        # === Layers ===
        self.embedding = TokenAndPositionEmbedding(
            cfg.vocab_size, cfg.block_size, cfg.n_embd, dtype=self.dtype_policy, name="embedding"
        )
        self.embedding_dropout = Dropout(cfg.dropout, dtype=self.dtype_policy, name="embedding_dropout")
        # GPT-2 scales the init of projections that write into the residual stream by 1/sqrt(2·n_layer),
        # so the stream's variance does not grow with depth.
        residual_init = keras.initializers.RandomNormal(stddev=0.02 / math.sqrt(2 * cfg.n_layer))
        self.blocks = [
            TransformerBlock(
                cfg.n_head,
                dropout=cfg.dropout,
                layer_norm_epsilon=cfg.layer_norm_epsilon,
                output_kernel_initializer=residual_init,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(cfg.n_layer)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=cfg.layer_norm_epsilon, dtype=self.dtype_policy, name="final_norm"
        )
        self.head = TiedLMHead(dtype="float32", name="lm_head")
        self.build((None, None))
        # A frozen model's config (`trainable=False`) freezes the sublayers and their variables too, as
        # `model.trainable = False` does; passed to Layer.__init__ it would freeze only the model's own flag.
        self.trainable = trainable

    def build(self, input_shape):
        hidden_shape = (None, None, self.config.n_embd)
        self.embedding.build(input_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        self.built = True

    def _check_length(self, time):
        if isinstance(time, numbers.Integral) and time > self.config.block_size:
            raise ValueError(
                f"Sequence length {time} exceeds the model's context block_size={self.config.block_size}; "
                "truncate the input or build the model with a larger block_size."
            )

    def _check_ids(self, token_ids):
        _check_integers("token_ids", token_ids)
        if len(token_ids.shape) != 2:
            raise ValueError(f"token_ids must be [batch, time]. Received: shape={tuple(token_ids.shape)}")
        self._check_length(token_ids.shape[1])
        # Where the ids are known (eagerly): a gather would wrap a negative id and, on a GPU, read zeros for one
        # past the table, both silently.
        ids = tf.get_static_value(token_ids)
        if ids is not None and ids.size and not 0 <= ids.min() <= ids.max() < self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, vocab_size={self.config.vocab_size}). "
                             f"Received: ids from {ids.min()} to {ids.max()}")

    def _check_positions(self, position_ids, token_ids):
        if position_ids is None:
            return
        _check_integers("position_ids", position_ids)
        shape = _static_shape(position_ids)
        if shape is not None and not _shapes_agree(shape, tuple(token_ids.shape)):
            raise ValueError(f"position_ids must have the shape of token_ids, {tuple(token_ids.shape)}. "
                             f"Received: shape={shape}")
        # As for token ids, where the positions are known: a negative one would wrap, one past the table read zeros.
        positions, block_size = tf.get_static_value(position_ids), self.config.block_size
        positions = None if positions is None else np.asarray(positions)
        if positions is not None and positions.size and not 0 <= positions.min() <= positions.max() < block_size:
            raise ValueError(f"position ids must be in [0, block_size={block_size}). "
                             f"Received: ids from {positions.min()} to {positions.max()}")

    @staticmethod
    def _check_mask(padding_mask, expected, dims):
        shape = None if padding_mask is None else _static_shape(padding_mask)
        if shape is not None and not _shapes_agree(shape, expected):
            raise ValueError(f"padding_mask must be {dims} = {expected}. Received: shape={shape}")

    def call(self, token_ids, padding_mask=None, position_ids=None, training=False):
        self._check_ids(token_ids)
        self._check_positions(position_ids, token_ids)
        self._check_mask(padding_mask, tuple(token_ids.shape), "[batch, time]")
        x = self.embedding_dropout(self.embedding(token_ids, position_ids=position_ids), training=training)  # (B, T, d)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        return self.head(self.final_norm(x), self._head_table())  # (B, T, V) float32

    def _head_table(self):
        # call() reads the table inside the model's autocast scope, call_with_cache (no layer call) outside any; the
        # embedding's variables are never autocast (`Embedding.add_weight`), so both form it, with LoRA
        # W + (alpha/r)·A·B, in float32 and round it to the compute dtype once, alike, as a saved merged table is.
        return ops.cast(self.embedding.token_embeddings, self.compute_dtype)

    def init_cache(self, batch_size, max_length=None):
        """Returns a zero KV cache: per block, `(keys, values)` as `CausalSelfAttention.init_cache` lays them out."""
        max_length = self.config.block_size if max_length is None else max_length
        self._check_length(max_length)
        return [block.attention.init_cache(batch_size, max_length) for block in self.blocks]

    def call_with_cache(self, token_ids, cache, cache_index, padding_mask=None, position_ids=None):
        """Runs only the new tokens `token_ids` `[batch, time]` against a KV cache from `init_cache`.

        Args:
            token_ids: int tensor `[batch, time]`; `token_ids[:, 0]` sits at `cache_index`.
            cache: list of per-block `(keys, values)` from `init_cache`.
            cache_index: int scalar >= 0, where the new tokens are written; or int `[batch]`, a slot per row
                (speculative decoding, whose rows accept different numbers of tokens).
            padding_mask: optional `[batch, max_length]` over the whole cache, 1 for real tokens.
            position_ids: optional `[batch, time]` positions (left-padded prompts); default
                `cache_index + arange(time)`.

        Returns:
            `(logits [batch, time, vocab_size] float32, updated cache)`.

        Raises:
            ValueError: if the new tokens would not fit in the cache, `cache_index` is negative or the cache holds
                another batch (checked where it is known before running, as it is eagerly; a write past either end
                would land on other slots), or an argument has the wrong dtype or shape.
        """
        _check_integers("cache_index", cache_index)
        if not isinstance(cache_index, int):  # an int64 index (np.arange's) would meet int32 positions
            cache_index = ops.cast(cache_index, "int32")
        self._check_ids(token_ids)
        self._check_positions(position_ids, token_ids)
        batch, time, slots = token_ids.shape[0], token_ids.shape[1], cache[0][1].shape[1]
        cache_rows, heads = cache[0][1].shape[0], self.config.n_head  # a cache row per (sequence, head)
        cache_batch = None if cache_rows is None else cache_rows // heads
        if batch is not None and cache_batch is not None and batch != cache_batch:
            raise ValueError(f"token_ids has {batch} row(s) but the cache holds {cache_batch}; "
                             f"use a cache from init_cache({batch}, ...).")
        self._check_mask(padding_mask, (batch, slots), "[batch, cache slots]")
        index_shape = _static_shape(cache_index)
        if index_shape is not None and not (index_shape == () or _shapes_agree(index_shape, (batch,))):
            raise ValueError(f"cache_index must be a scalar, or a slot per row: [batch] = ({batch},). "
                             f"Received: shape={index_shape}")
        index = tf.get_static_value(cache_index)
        # A negative index would write before the cache's start: silently the wrong slots with position_ids.
        if index is not None and int(np.min(index)) < 0:
            raise ValueError(f"cache_index must be >= 0. Received: cache_index={np.asarray(index).tolist()}")
        if index is not None and slots is not None and time is not None and int(np.max(index)) + time > slots:
            raise ValueError(
                f"call_with_cache writes {time} token(s) at cache_index {int(np.max(index))} into a cache of {slots} "
                "slots; init_cache a longer cache, or start a new one."
            )
        if position_ids is None and len(getattr(cache_index, "shape", ())) == 1:
            position_ids = cache_index[:, None] + ops.arange(ops.shape(token_ids)[1])[None, :]  # (B, T)
        x = self.embedding(token_ids, start_index=cache_index, position_ids=position_ids)
        new_cache = []
        for block, block_cache in zip(self.blocks, cache):
            x, block_cache = block(x, padding_mask=padding_mask, cache=block_cache, cache_index=cache_index)
            new_cache.append(block_cache)
        return self.head(self.final_norm(x), self._head_table()), new_cache

    def score(self, token_ids, padding_mask=None):
        """log P(W) = Σ_i log P(w_i | w_1..w_{i-1}) for each row of `token_ids`.

        The first real token of a row is the condition, so a row of T real tokens gets T-1 scored tokens.
        `padding_mask` (1 for real tokens) may pad either side, as `generate` takes prompts: each real token sits
        at the position "real tokens before it", so a padded row scores as it does alone. Targets that are
        padding or the condition get log-prob 0 and do not count towards the sum.

        Returns:
            dict with `token_log_probs` `[batch, time-1]` and `log_likelihood` `[batch]`.
        """
        token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
        if padding_mask is None:
            logits = self(token_ids)
        else:
            mask = ops.cast(ops.convert_to_tensor(padding_mask), "int32")
            position_ids = ops.maximum(ops.cumsum(mask, axis=1) - 1, 0)
            logits = self(token_ids, padding_mask=mask, position_ids=position_ids)
        targets = token_ids[:, 1:]  # (B, T-1)
        log_probs = ops.log_softmax(logits[:, :-1], axis=-1)  # (B, T-1, V)
        token_log_probs = ops.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # (B, T-1)
        if padding_mask is not None:
            token_log_probs = token_log_probs * ops.cast(mask[:, 1:] * mask[:, :-1], "float32")
        return {"token_log_probs": token_log_probs, "log_likelihood": ops.sum(token_log_probs, axis=-1)}

    def get_config(self):
        return {
            "config": self.config.to_dict(),
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }
