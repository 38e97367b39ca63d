"""Data: tokenizers, corpus sources and `tf.data` language-modelling pipelines."""

from tf_lm.data.tokenizers import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "build_tokenizer", "load_tokenizer"]
