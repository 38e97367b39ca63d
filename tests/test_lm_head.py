import keras
import numpy as np

from tf_lm.layers import TiedLMHead


def test_logits_are_hidden_times_embedding_transpose_in_float32():
    head = TiedLMHead(dtype="float32")
    hidden = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    embeddings = np.random.default_rng(1).normal(size=(7, 4)).astype("float32")
    logits = head(hidden, embeddings)
    assert logits.dtype == "float32" and tuple(logits.shape) == (2, 3, 7)
    np.testing.assert_allclose(np.asarray(logits), hidden @ embeddings.T, atol=1e-5)


def test_config_round_trip():
    head = TiedLMHead(name="head", dtype="float32")
    assert TiedLMHead.from_config(head.get_config()).get_config() == head.get_config()


def test_bfloat16_inputs_still_give_float32_logits():
    head = TiedLMHead(dtype="float32")
    hidden = keras.ops.cast(np.ones((1, 2, 4)), "bfloat16")
    assert head(hidden, keras.ops.cast(np.ones((3, 4)), "bfloat16")).dtype == "float32"
