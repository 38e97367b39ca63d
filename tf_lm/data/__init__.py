"""Data: tokenizers, streaming corpus sources, on-disk token stores and `tf.data` language-modelling pipelines.

Names load on first use: preparing a store (sources, tokenizers, stores) does not load TensorFlow; only the
`tf.data` pipelines do.
"""

import importlib

_EXPORTS = {
    "BPETokenizer": "tf_lm.data.tokenizers",
    "CharTokenizer": "tf_lm.data.tokenizers",
    "Source": "tf_lm.data.sources",
    "TokenStore": "tf_lm.data.store",
    "build_tokenizer": "tf_lm.data.tokenizers",
    "contiguous_windows": "tf_lm.data.pipeline",
    "lm_datasets": "tf_lm.data.pipeline",
    "load_tokenizer": "tf_lm.data.tokenizers",
    "open_source": "tf_lm.data.sources",
    "prepare_store": "tf_lm.data.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_lm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
