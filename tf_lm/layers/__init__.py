"""Keras 3 layers of the decoder-only Transformer."""

from tf_lm.layers.attention import CausalSelfAttention
from tf_lm.layers.block import TransformerBlock
from tf_lm.layers.dropout import Dropout
from tf_lm.layers.embedding import TokenAndPositionEmbedding
from tf_lm.layers.lm_head import TiedLMHead

__all__ = ["CausalSelfAttention", "Dropout", "TiedLMHead", "TokenAndPositionEmbedding", "TransformerBlock"]
