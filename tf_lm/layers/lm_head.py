"""The autoregressive output head, tied to the token embedding (as GPT-2 and nanoGPT do)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_lm")
class TiedLMHead(keras.layers.Layer):
    """Projects hidden states onto the vocabulary with the (shared) token-embedding matrix.

    The head owns no weights: tying halves the embedding parameters and is what GPT-2's checkpoints
    assume. Logits are computed in float32 even under a mixed-precision policy, so the softmax and
    the loss never see bfloat16/float16 rounding.

    Call args:
        hidden: float tensor `[batch, time, hidden_dim]`.
        embeddings: float tensor `[vocab_size, hidden_dim]`, the token-embedding table.

    Returns:
        float32 tensor `[batch, time, vocab_size]`.
    """

    def call(self, hidden, embeddings):
        hidden = ops.cast(hidden, "float32")
        embeddings = ops.cast(embeddings, "float32")
        return ops.matmul(hidden, ops.transpose(embeddings))  # (B, T, V)

    def compute_output_shape(self, hidden_shape, embeddings_shape):
        return tuple(hidden_shape[:-1]) + (embeddings_shape[0],)
