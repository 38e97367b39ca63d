"""Data: tokenizers, streaming corpus sources, on-disk token stores and `tf.data` language-modelling pipelines."""

from tf_lm.data.pipeline import contiguous_windows, lm_datasets
from tf_lm.data.sources import Source, open_source
from tf_lm.data.store import TokenStore, prepare_store
from tf_lm.data.tokenizers import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "Source",
    "TokenStore",
    "build_tokenizer",
    "contiguous_windows",
    "lm_datasets",
    "load_tokenizer",
    "open_source",
    "prepare_store",
]
