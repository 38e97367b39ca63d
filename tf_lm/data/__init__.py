"""Data: tokenizers, corpus sources and `tf.data` language-modelling pipelines."""

from tf_lm.data.pipeline import encode_corpus, lm_datasets
from tf_lm.data.sources import Corpus, read_source
from tf_lm.data.tokenizers import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "Corpus",
    "build_tokenizer",
    "encode_corpus",
    "lm_datasets",
    "load_tokenizer",
    "read_source",
]
