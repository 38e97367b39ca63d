import math

import numpy as np
from conftest import check_layer

from tf_lm.layers import TransformerBlock


def _inputs(time=5, seed=0):
    return np.random.default_rng(seed).normal(size=(2, time, 8)).astype("float32")


def test_layer_contract(tmp_path):
    outputs = check_layer(TransformerBlock(num_heads=2, intermediate_dim=16, dropout=0.1), _inputs(), tmp_path,
                          trainable_weights=12)
    assert outputs.shape == (2, 5, 8)


def test_default_mlp_is_four_times_wider():
    block = TransformerBlock(num_heads=2)
    block(_inputs())
    assert tuple(block.mlp_in.kernel.shape) == (8, 32)


def test_causal_and_cached_like_its_attention():
    block = TransformerBlock(num_heads=2)
    x = _inputs(time=6)
    full = np.asarray(block(x))
    edited = x.copy()
    edited[:, 4:] = 3.0
    np.testing.assert_allclose(np.asarray(block(edited))[:, :4], full[:, :4], atol=1e-6)
    cache = block.attention.init_cache(2, 6)
    head, cache = block(x[:, :4], cache=cache, cache_index=0)
    tail, cache = block(x[:, 4:], cache=cache, cache_index=4)
    np.testing.assert_allclose(np.concatenate([head, tail], axis=1), full, atol=1e-5)


def test_dropout_only_in_training():
    block = TransformerBlock(num_heads=2, dropout=0.5)
    x = _inputs()
    np.testing.assert_array_equal(np.asarray(block(x)), np.asarray(block(x)))
    assert not np.allclose(np.asarray(block(x, training=True)), np.asarray(block(x)))


def test_bert_style_block_contract(tmp_path):
    block = TransformerBlock(num_heads=2, intermediate_dim=16, causal=False, norm_first=False, approximate_gelu=False)
    check_layer(block, _inputs(), tmp_path, trainable_weights=12)


def test_post_norm_exact_gelu_block_matches_numpy():
    block = TransformerBlock(num_heads=2, intermediate_dim=16, causal=False, norm_first=False, approximate_gelu=False,
                             layer_norm_epsilon=1e-12)
    x = _inputs()
    y = np.asarray(block(x))

    def norm(v, layer):
        mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + 1e-12) * np.asarray(layer.gamma) + np.asarray(layer.beta)

    def dense(v, layer):
        return v @ np.asarray(layer.kernel) + np.asarray(layer.bias)

    attention = np.asarray(block.attention(x))  # bidirectional attention alone (tested in test_attention)
    h = norm(x + attention, block.attention_norm)
    inner = dense(h, block.mlp_in)
    gelu = 0.5 * inner * (1 + np.vectorize(math.erf)(inner / np.sqrt(2)))
    expected = norm(h + dense(gelu, block.mlp_out), block.mlp_norm)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_training_draws_a_mask_at_every_dropout():
    """Attention weights, attention output and MLP output: a training call advances each dropout's seed generator."""
    block = TransformerBlock(num_heads=2, dropout=0.5)
    x = _inputs()
    block(x)
    before = [np.asarray(v) for v in block.non_trainable_variables]
    block(x, training=True)
    after = [np.asarray(v) for v in block.non_trainable_variables]
    assert len(before) == 3 and not any(np.array_equal(a, b) for a, b in zip(before, after))


def test_both_residual_projections_take_the_output_initializer():
    block = TransformerBlock(num_heads=2, output_kernel_initializer="zeros")
    block.build((2, 5, 8))
    for dense in (block.attention.output_dense, block.mlp_out):
        assert not np.any(np.asarray(dense.kernel)), dense.name
    for dense in (block.attention.qkv_dense, block.mlp_in):
        assert np.all(np.asarray(dense.kernel) != 0), dense.name


def test_config_keeps_every_argument():
    arguments = dict(num_heads=2, intermediate_dim=16, dropout=0.25, layer_norm_epsilon=1e-12, causal=False,
                     norm_first=False, approximate_gelu=False)
    clone = TransformerBlock.from_config(TransformerBlock(**arguments).get_config())
    assert {name: getattr(clone, name) for name in arguments} == arguments
