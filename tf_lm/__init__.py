"""tf_lm: autoregressive Transformer language models in TensorFlow / Keras 3.

The top-level names load on first use, so `import tf_lm.data` (data preparation) does not load TensorFlow.
"""

import importlib

from tf_lm._backend import require_tensorflow_backend

require_tensorflow_backend()

_EXPORTS = {"LMConfig": "tf_lm.configs", "TransformerLM": "tf_lm.model", "generate": "tf_lm.generation"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_lm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
