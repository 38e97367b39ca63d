"""Token embeddings plus learned absolute position embeddings (GPT-2's `wte` + `wpe`)."""

import keras
from keras import ops

from tf_lm.layers.arguments import positive_int
from tf_lm.layers.initializers import clone_initializer


@keras.saving.register_keras_serializable(package="tf_lm")
class Embedding(keras.layers.Embedding):
    """`keras.layers.Embedding` whose table and LoRA factors are read in float32 wherever they are read, and whose
    saved LoRA merge keeps the table's own dtype.

    Keras casts the merged table `W + (alpha/r)·A·B` to the compute dtype, so under a mixed policy a save would
    write the float32 table rounded to bfloat16 or float16, even where the factors are zero.
    """

    def add_weight(self, *args, **kwargs):
        # Not autocast: a lookup casts only the rows it reads anyway, and the tied head's table (`.embeddings`, with
        # LoRA W + (alpha/r)·A·B) is then formed in float32 also inside a mixed model's autocast scope, as outside
        # it and as the saved merge is; autocast, the factors would be rounded before the product.
        return super().add_weight(*args, **{**kwargs, "autocast": False})

    def _get_embeddings_with_merged_lora(self):
        if not self.lora_enabled or self.quantization_mode is not None:
            return super()._get_embeddings_with_merged_lora()
        scale = self.lora_alpha / self.lora_rank
        return ops.add(self._embeddings, scale * ops.matmul(self.lora_embeddings_a, self.lora_embeddings_b)), None, None


@keras.saving.register_keras_serializable(package="tf_lm")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Sums a token embedding and a learned absolute position embedding.

    Args:
        vocab_size: int. Number of token ids.
        max_length: int. Number of learned positions (the model's context length).
        hidden_dim: int. Embedding width.
        embeddings_initializer: initializer of both tables. Defaults to N(0, 0.02), as GPT-2.

    Call args:
        token_ids: int tensor `[batch, time]`.
        start_index: int or scalar tensor, default 0. Position of `token_ids[:, 0]` when decoding with a cache.
        position_ids: optional int tensor `[batch, time]` overriding `start_index`, for left-padded prompts.

    Returns:
        float tensor `[batch, time, hidden_dim]`.

    Example:
    >>> layer = TokenAndPositionEmbedding(vocab_size=10, max_length=8, hidden_dim=4)
    >>> layer(ops.zeros((2, 5), "int32")).shape
    (2, 5, 4)
    """

    def __init__(self, vocab_size, max_length, hidden_dim, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        # As keras.layers.Embedding: under a mixed policy the looked-up rows are cast, not the whole table each call.
        self.autocast = False
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.max_length = positive_int("max_length", max_length)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=0.02)
        )

    @property
    def token_embeddings(self):
        """The token table `[vocab_size, hidden_dim]`: the variable, or with LoRA enabled, `W + (alpha/r)·A·B`."""
        return self.token_embedding.embeddings

    @property
    def position_embeddings(self):
        """The position table `[max_length, hidden_dim]`."""
        return self.position_embedding.embeddings

    def build(self, input_shape):
        # Keras `Embedding`s, so LoRA can adapt the token table (and with it the tied head) with Keras's own
        # `Embedding.enable_lora`, which also merges the factors into the saved table; the position table is one
        # too so that the weights keep their order (tokens, then positions).
        self.token_embedding, self.position_embedding = (
            Embedding(rows, self.hidden_dim, embeddings_initializer=clone_initializer(
                self.embeddings_initializer), dtype=self.dtype_policy, name=name)
            for rows, name in ((self.vocab_size, "token_embeddings"), (self.max_length, "position_embeddings"))
        )
        self.token_embedding.build()
        self.position_embedding.build()

    def call(self, token_ids, start_index=0, position_ids=None):
        tokens = self.token_embedding(token_ids)  # (B, T, d)
        if position_ids is None:
            time = ops.shape(token_ids)[1]
            positions = ops.slice(self.position_embeddings, (start_index, 0), (time, self.hidden_dim))
            positions = positions[None]  # (1, T, d)
        else:
            positions = self.position_embedding(position_ids)  # (B, T, d)
        return ops.cast(tokens, self.compute_dtype) + ops.cast(positions, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            hidden_dim=self.hidden_dim,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config
