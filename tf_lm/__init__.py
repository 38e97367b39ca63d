"""tf_lm: autoregressive Transformer language models in TensorFlow / Keras 3."""

from tf_lm._backend import require_tensorflow_backend

require_tensorflow_backend()

from tf_lm.configs import LMConfig  # noqa: E402
from tf_lm.generation import generate  # noqa: E402
from tf_lm.model import TransformerLM  # noqa: E402

__all__ = ["LMConfig", "TransformerLM", "generate"]
