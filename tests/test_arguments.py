"""The layers' constructor checks: a count that is not an integer >= 1 is refused, never truncated."""

import numpy as np
import pytest

from tf_lm.layers import CausalSelfAttention, TokenAndPositionEmbedding, TransformerBlock
from tf_lm.layers.arguments import positive_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_integers_pass_as_python_ints(value):
    assert positive_int("n", value) == value and type(positive_int("n", value)) is int


@pytest.mark.parametrize("value", [0, -2, 2.7, 2.0, True, "4", None])
def test_other_values_are_refused_naming_the_argument(value):
    with pytest.raises(ValueError, match=rf"^n must be an integer >= 1\. Received: n={value!r}$"):
        positive_int("n", value)


@pytest.mark.parametrize("make", [
    lambda: CausalSelfAttention(num_heads=2.7),
    lambda: TransformerBlock(num_heads=2.7),
    lambda: TransformerBlock(num_heads=2, intermediate_dim=31.5),
    lambda: TokenAndPositionEmbedding(vocab_size=65.9, max_length=8, hidden_dim=4),
])
def test_layers_refuse_a_fractional_count(make):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        make()
