"""Token embeddings plus learned absolute position embeddings (GPT-2's `wte` + `wpe`)."""

import keras
from keras import ops

from tf_lm.layers.initializers import clone_initializer


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
        for name, value in (("vocab_size", vocab_size), ("max_length", max_length), ("hidden_dim", hidden_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1. Received: {name}={value}")
        self.vocab_size = int(vocab_size)
        self.max_length = int(max_length)
        self.hidden_dim = int(hidden_dim)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=0.02)
        )

    def build(self, input_shape):
        self.token_embeddings = self.add_weight(
            name="token_embeddings",
            shape=(self.vocab_size, self.hidden_dim),
            initializer=clone_initializer(self.embeddings_initializer),
        )
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_length, self.hidden_dim),
            initializer=clone_initializer(self.embeddings_initializer),
        )

    def call(self, token_ids, start_index=0, position_ids=None):
        tokens = ops.take(self.token_embeddings, token_ids, axis=0)  # (B, T, d)
        if position_ids is None:
            time = ops.shape(token_ids)[1]
            positions = ops.slice(self.position_embeddings, (start_index, 0), (time, self.hidden_dim))
            positions = positions[None]  # (1, T, d)
        else:
            positions = ops.take(self.position_embeddings, position_ids, axis=0)  # (B, T, d)
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
