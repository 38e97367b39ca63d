"""Multi-head self-attention with a fused QKV projection: causal with a fixed-shape KV cache (GPT), or bidirectional
(BERT)."""

import math

import keras
from keras import ops

from tf_lm.layers.arguments import positive_int
from tf_lm.layers.dense import Dense
from tf_lm.layers.dropout import Dropout
from tf_lm.layers.initializers import clone_initializer

# Finite rather than -inf so a row with every key masked (a padded query) gives a uniform, not NaN, softmax.
_MASKED_SCORE = -1e9


def _default_kernel_initializer():
    return keras.initializers.RandomNormal(stddev=0.02)


def _write_rows(cache, entries, slots, axis):
    """Writes `entries` into `cache` at positions `slots[b] + t` of axis `axis` in each row b (t indexing that axis
    of `entries`); the axes before it are written whole, the ones after it are the written windows."""
    shape = ops.shape(entries)[: axis + 1]
    grids = [ops.broadcast_to(ops.reshape(ops.arange(size), [-1 if i == dim else 1 for i in range(axis + 1)]), shape)
             for dim, size in enumerate(shape)]
    grids[axis] = grids[axis] + ops.reshape(ops.cast(slots, "int32"), [-1] + [1] * axis)
    indices = ops.reshape(ops.stack(grids, axis=-1), (-1, axis + 1))
    updates = ops.reshape(entries, (-1,) + tuple(entries.shape[axis + 1 :]))
    return ops.scatter_update(cache, indices, updates)


@keras.saving.register_keras_serializable(package="tf_lm")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention in which position t only attends to positions <= t (or, with `causal=False`, to all).

    The causal mask is built here from positions, so callers only pass padding. With a cache the
    layer processes only the new tokens: it writes their keys/values into the preallocated cache
    at `cache_index` and attends over the whole cache, the causal mask turning rectangular. The cache holds keys
    as `[batch·heads, head_dim, slots]` and values as `[batch·heads, slots, head_dim]`, the layouts XLA's CPU
    matrix products read as they are, with one batch dimension: in any other layout (or with batch and heads as
    two dimensions) every decode step copies the whole cache of every layer, which cost more than the step's
    matrix products themselves.

    Args:
        num_heads: int. Number of attention heads; must divide the input width.
        dropout: float, default 0. Dropout on the attention weights and on the output projection.
        causal: bool, default True. False makes every token attend to every (unpadded) token, as BERT's
            encoder does; a cache is then refused, since a bidirectional layer is never decoded step by step.
        kernel_initializer: initializer of the QKV projection. Defaults to N(0, 0.02).
        output_kernel_initializer: initializer of the output projection. Defaults to N(0, 0.02);
            GPT-2 scales it by 1/sqrt(2·n_layer), which `TransformerLM` does.

    Call args:
        x: float tensor `[batch, time, hidden_dim]`.
        padding_mask: optional bool/int tensor `[batch, key_length]`, 1 for real tokens. `key_length` is
            `time` without a cache and the cache length with one. Or `[batch, time, key_length]`: which keys each
            query may see (several sequences packed into one row, each attending only within itself).
        cache: optional `(keys, values)` from `init_cache`: float tensors `[batch·num_heads, head_dim, max_length]`
            and `[batch·num_heads, max_length, head_dim]`.
        cache_index: required with `cache`: the cache slot of `x[:, 0]`, an int scalar, or int32 `[batch]` for a
            slot per row (speculative decoding, where rows accept different numbers of tokens).
        training: bool, default False. Enables dropout.

    Returns:
        `y` of shape `[batch, time, hidden_dim]`, or `(y, updated_cache)` when a cache was passed.

    Example:
    >>> attention = CausalSelfAttention(num_heads=2)
    >>> attention(ops.ones((2, 5, 8))).shape
    (2, 5, 8)
    """

    def __init__(self, num_heads, dropout=0.0, kernel_initializer=None, output_kernel_initializer=None, causal=True,
                 **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
        self.num_heads = positive_int("num_heads", num_heads)
        self.dropout = float(dropout)
        self.causal = bool(causal)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or _default_kernel_initializer())
        self.output_kernel_initializer = keras.initializers.get(
            output_kernel_initializer or _default_kernel_initializer()
        )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                f"The input width must be divisible by num_heads. Received: hidden_dim={hidden_dim}, "
                f"num_heads={self.num_heads}"
            )
        self.hidden_dim = hidden_dim
        self.head_dim = hidden_dim // self.num_heads
        self.qkv_dense = Dense(
            3 * hidden_dim,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv_dense.build(input_shape)
        self.output_dense = Dense(
            hidden_dim,
            kernel_initializer=clone_initializer(self.output_kernel_initializer),
            dtype=self.dtype_policy,
            name="output",
        )
        self.output_dense.build(input_shape)
        self.attention_dropout = Dropout(self.dropout, dtype=self.dtype_policy)
        self.output_dropout = Dropout(self.dropout, dtype=self.dtype_policy)

    def init_cache(self, batch_size, max_length):
        """A zero cache for `call` (the layer must be built): `(keys, values)` as the class docstring lays them out."""
        rows = batch_size * self.num_heads
        return (ops.zeros((rows, self.head_dim, max_length), dtype=self.compute_dtype),
                ops.zeros((rows, max_length, self.head_dim), dtype=self.compute_dtype))

    def call(self, x, padding_mask=None, cache=None, cache_index=None, training=False):
        batch, time = ops.shape(x)[0], ops.shape(x)[1]
        # A split rather than slices of one (B, T, 3, H, Dh) tensor: a slice's gradient is a zero-filled tensor of
        # the whole, three times per layer (a split's is one concatenation).
        heads = (batch, time, self.num_heads, self.head_dim)
        query, key, value = (ops.reshape(part, heads) for part in ops.split(self.qkv_dense(x), 3, axis=-1))
        # Scaled before the product, as Keras's MultiHeadAttention does: in float16 a score formed first and scaled
        # after could pass 65504 (inf, then NaN) where the scaled one fits.
        query = ops.multiply(query, ops.cast(1.0 / math.sqrt(self.head_dim), query.dtype))

        query_start = 0
        if cache is not None:
            if not self.causal:
                raise ValueError("A cache needs causal attention; this layer has causal=False.")
            if cache_index is None:
                raise ValueError("cache_index is required when a cache is passed.")
            keys, values = cache
            if not isinstance(cache_index, int):  # an int64 index (np.arange's) would meet int32 positions
                cache_index = ops.cast(cache_index, "int32")
            head_dim = self.head_dim
            # (B·H, Dh, T) and (B·H, T, Dh): only the new entries are transposed into the cache's layouts.
            new_keys = ops.cast(ops.reshape(ops.transpose(key, (0, 2, 3, 1)), (-1, head_dim, time)), keys.dtype)
            new_values = ops.cast(ops.reshape(ops.transpose(value, (0, 2, 1, 3)), (-1, time, head_dim)), values.dtype)
            if len(getattr(cache_index, "shape", ())) == 1:
                slots = ops.repeat(cache_index, self.num_heads)  # (B·H,)
                keys = _write_rows(keys, new_keys, slots, axis=2)
                values = _write_rows(values, new_values, slots, axis=1)
                query_start = cache_index[:, None]  # (B, 1)
            else:
                keys = ops.slice_update(keys, (0, 0, cache_index), new_keys)
                values = ops.slice_update(values, (0, cache_index, 0), new_values)
                query_start = cache_index
            cache = (keys, values)

        allowed = None
        if self.causal:
            key_length = ops.shape(key)[1] if cache is None else ops.shape(values)[1]
            query_positions = ops.arange(time) + query_start  # (T,), or (B, T) with a slot per row
            allowed = ops.arange(key_length) <= query_positions[..., None]  # (T, S) or (B, T, S)
            allowed = allowed[None, None] if len(allowed.shape) == 2 else allowed[:, None]  # (1 or B, 1, T, S)
        if padding_mask is not None:
            padding = ops.cast(padding_mask, "bool")
            padding = padding[:, None, None, :] if len(padding.shape) == 2 else padding[:, None]  # (B, 1, 1|T, S)
            allowed = padding if allowed is None else ops.logical_and(allowed, padding)  # (B, 1, T, S)

        if cache is None:
            scores = ops.einsum("bqhd,bkhd->bhqk", query, key)  # (B, H, T, S)
        else:
            # One batch dimension (B·H), so that the products read the cache as written (see the class docstring).
            flat_query = ops.reshape(ops.transpose(query, (0, 2, 1, 3)), (-1, time, self.head_dim))  # (B·H, T, Dh)
            scores = ops.matmul(flat_query, ops.cast(keys, query.dtype))  # (B·H, T, S)
            scores = ops.reshape(scores, (batch, self.num_heads, time, -1))  # (B, H, T, S)
        scores = ops.cast(scores, "float32")
        if allowed is not None:
            scores = ops.where(allowed, scores, _MASKED_SCORE)
        weights = ops.cast(ops.softmax(scores, axis=-1), query.dtype)
        weights = self.attention_dropout(weights, training=training)
        if cache is None:
            attended = ops.einsum("bhqk,bkhd->bqhd", weights, value)  # (B, T, H, Dh)
        else:
            flat_weights = ops.reshape(weights, (-1, time, ops.shape(values)[1]))  # (B·H, T, S)
            attended = ops.matmul(flat_weights, ops.cast(values, query.dtype))  # (B·H, T, Dh)
            attended = ops.transpose(ops.reshape(attended, (batch, self.num_heads, time, self.head_dim)), (0, 2, 1, 3))
        attended = ops.reshape(attended, (batch, time, self.hidden_dim))  # (B, T, d)
        y = self.output_dropout(self.output_dense(attended), training=training)
        return y if cache is None else (y, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            dropout=self.dropout,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            output_kernel_initializer=keras.initializers.serialize(self.output_kernel_initializer),
            causal=self.causal,
        )
        return config
