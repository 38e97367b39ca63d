import numpy as np
from conftest import check_layer

from tf_lm.layers import TokenAndPositionEmbedding


def test_layer_contract(tmp_path):
    layer = TokenAndPositionEmbedding(vocab_size=11, max_length=8, hidden_dim=4)
    outputs = check_layer(layer, np.arange(10, dtype="int32").reshape(2, 5), tmp_path, trainable_weights=2)
    assert outputs.shape == (2, 5, 4)


def test_sum_of_token_and_position_rows():
    layer = TokenAndPositionEmbedding(vocab_size=11, max_length=8, hidden_dim=4)
    ids = np.array([[3, 7, 1]], dtype="int32")
    out = np.asarray(layer(ids))
    tokens, positions = layer.token_embeddings.numpy(), layer.position_embeddings.numpy()
    np.testing.assert_allclose(out[0], tokens[[3, 7, 1]] + positions[:3], atol=1e-7)


def test_start_index_and_position_ids_select_positions():
    layer = TokenAndPositionEmbedding(vocab_size=11, max_length=8, hidden_dim=4)
    ids = np.array([[3, 7]], dtype="int32")
    layer.build(ids.shape)
    tokens, positions = layer.token_embeddings.numpy(), layer.position_embeddings.numpy()
    np.testing.assert_allclose(np.asarray(layer(ids, start_index=5))[0], tokens[[3, 7]] + positions[5:7], atol=1e-7)
    out = np.asarray(layer(ids, position_ids=np.array([[0, 4]], dtype="int32")))[0]
    np.testing.assert_allclose(out, tokens[[3, 7]] + positions[[0, 4]], atol=1e-7)
