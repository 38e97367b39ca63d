"""Text generation: samplers and KV-cached, XLA-compiled decoding, plain or speculative."""

from tf_lm.generation.generate import Stream, generate, stream
from tf_lm.generation.samplers import (
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
)
from tf_lm.generation.speculative import SpeculationStats

__all__ = [
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "SpeculationStats",
    "Stream",
    "TopKSampler",
    "TopPSampler",
    "generate",
    "get_sampler",
    "stream",
]
