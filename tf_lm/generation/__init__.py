"""Text generation: samplers and KV-cached, XLA-compiled decoding."""

from tf_lm.generation.generate import generate, stream
from tf_lm.generation.samplers import (
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
)

__all__ = [
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "generate",
    "get_sampler",
    "stream",
]
