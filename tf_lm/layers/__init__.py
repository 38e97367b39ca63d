"""Keras 3 layers of the decoder-only Transformer.

Names: the layers use KerasHub's (`hidden_dim`, `num_heads`, `intermediate_dim`, `max_length`), so they read like
its layers; each model's config keeps its checkpoint family's, so a `config.json` maps onto it field by field:
`LMConfig` GPT-2's and nanoGPT's (`n_embd`, `n_head`, `block_size`), `BertConfig` BERT's (`hidden_size`,
`num_attention_heads`). The model (`TransformerLM`, `BertClassifier`) is where one becomes the other.
"""

from tf_lm.layers.attention import CausalSelfAttention
from tf_lm.layers.block import TransformerBlock
from tf_lm.layers.dropout import Dropout
from tf_lm.layers.embedding import TokenAndPositionEmbedding
from tf_lm.layers.lm_head import TiedLMHead

__all__ = ["CausalSelfAttention", "Dropout", "TiedLMHead", "TokenAndPositionEmbedding", "TransformerBlock"]
