import keras
import numpy as np
import pytest
from conftest import check_layer

from tf_lm.layers import CausalSelfAttention


def _inputs(batch=2, time=5, width=8, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, time, width)).astype("float32")


def test_layer_contract(tmp_path):
    outputs = check_layer(CausalSelfAttention(num_heads=2), _inputs(), tmp_path, trainable_weights=4)
    assert outputs.shape == (2, 5, 8)


def test_width_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="Received: hidden_dim=8, num_heads=3"):
        CausalSelfAttention(num_heads=3)(_inputs())


def test_outputs_before_t_ignore_inputs_from_t_on():
    layer = CausalSelfAttention(num_heads=2)
    x = _inputs()
    for k in range(1, 5):
        edited = x.copy()
        edited[:, k:] = _inputs(seed=k)[:, k:]
        np.testing.assert_allclose(np.asarray(layer(edited))[:, :k], np.asarray(layer(x))[:, :k], atol=1e-6)


def _sharp(layer, x, seed=0):
    """`layer`, built on `x`, with weights of std 0.5: a key that leaks through a mask moves the outputs visibly."""
    layer.build(x.shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return layer


def test_padded_keys_are_ignored():
    # Left padding: the padded keys come before the real queries, so only the padding mask (not the causal one)
    # can hide them.
    x = _inputs()
    layer = _sharp(CausalSelfAttention(num_heads=2), x)
    padding_mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    edited = x.copy()
    edited[0, :2] = 3.0
    real = np.asarray(layer(x, padding_mask=padding_mask))
    np.testing.assert_allclose(np.asarray(layer(edited, padding_mask=padding_mask))[0, 2:], real[0, 2:], atol=1e-5)


def test_cached_decoding_equals_full_pass():
    x = _inputs(time=6)
    layer = _sharp(CausalSelfAttention(num_heads=2), x)  # a lost cached key moves the outputs visibly
    full = np.asarray(layer(x))
    cache = layer.init_cache(2, 8)
    prefix, cache = layer(x[:, :3], cache=cache, cache_index=0)
    steps = [np.asarray(prefix)]
    for t in np.arange(3, 6):  # int64 indices, as a counter from numpy is
        y, cache = layer(x[:, t : t + 1], cache=cache, cache_index=t)
        steps.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_a_cache_slot_per_row_equals_the_full_pass():
    # Rows at different cache slots (speculative decoding): row 0 continues at slot 3, row 1 rewrites slot 2 on.
    layer = CausalSelfAttention(num_heads=2)
    x = _inputs(time=6)
    full = np.asarray(layer(x))
    _, cache = layer(x[:, :3], cache=layer.init_cache(2, 8), cache_index=0)
    new = np.stack([x[0, 3:5], x[1, 2:4]])  # (2, 2, 8)
    y, cache = layer(new, cache=cache, cache_index=np.array([3, 2], "int32"))
    np.testing.assert_allclose(np.asarray(y), np.stack([full[0, 3:5], full[1, 2:4]]), atol=1e-5)
    y, _ = layer(np.stack([x[0, 5:6], x[1, 4:5]]), cache=cache, cache_index=np.array([5, 4], "int64"))
    np.testing.assert_allclose(np.asarray(y), np.stack([full[0, 5:6], full[1, 4:5]]), atol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_float16_scores_are_scaled_before_they_can_overflow(cached):
    """Queries and keys of 96 in every component: q·k = 73728 passes float16's 65504 (inf, then NaN) if it is
    formed before the 1/sqrt(head_dim) scale; scaled first it is 26067, which fits."""
    x = np.ones((1, 3, 16), "float32")
    kernel = np.zeros((16, 48), "float32")
    kernel[:, :32] = 6.0
    kernel[:, 32:] = np.random.default_rng(0).normal(scale=0.1, size=(16, 16))
    outputs, weights = [], None
    for policy in ("float32", "mixed_float16"):
        layer = CausalSelfAttention(num_heads=2, dtype=policy)
        layer.build(x.shape)
        if weights is None:
            layer.qkv_dense.kernel.assign(kernel)
            weights = layer.get_weights()
        layer.set_weights(weights)
        y = layer(x, cache=layer.init_cache(1, 4), cache_index=0)[0] if cached else layer(x)
        outputs.append(np.asarray(y, dtype="float32"))
    assert np.isfinite(outputs[1]).all()
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-2)


def test_cache_needs_an_index():
    layer = CausalSelfAttention(num_heads=2)
    layer.build(_inputs().shape)
    with pytest.raises(ValueError, match="cache_index is required"):
        layer(_inputs(), cache=layer.init_cache(2, 8))


def test_bidirectional_layer_contract(tmp_path):
    check_layer(CausalSelfAttention(num_heads=2, causal=False), _inputs(), tmp_path, trainable_weights=4)


def test_bidirectional_padded_token_changes_no_real_token_and_real_tokens_see_each_other():
    layer = CausalSelfAttention(num_heads=2, causal=False)
    x = _inputs()
    padding_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    real = np.asarray(layer(x, padding_mask=padding_mask))
    padded_edit = x.copy()
    padded_edit[0, 3:] = 100.0
    np.testing.assert_allclose(np.asarray(layer(padded_edit, padding_mask=padding_mask))[0, :3], real[0, :3],
                               atol=1e-6)
    for t in range(3):  # editing any real token moves every real token's output, earlier ones included
        real_edit = x.copy()
        real_edit[0, t] += 1.0
        moved = np.abs(np.asarray(layer(real_edit, padding_mask=padding_mask))[0, :3] - real[0, :3]).max(axis=-1)
        assert np.all(moved > 1e-4), (t, moved)


def test_a_per_query_mask_keeps_packed_sequences_apart():
    """Two sequences in one row (positions 0-1 and 2-4) under a block-diagonal [batch, time, key] mask: each gives
    what it gives alone, and editing one moves none of the other's outputs."""
    layer = CausalSelfAttention(num_heads=2, causal=False)
    x = _inputs(batch=1)
    sequence = np.array([1, 1, 2, 2, 2])
    mask = (sequence[:, None] == sequence[None, :])[None]  # (1, T, T)
    packed = np.asarray(layer(x, padding_mask=mask))
    np.testing.assert_allclose(packed[0, :2], np.asarray(layer(x[:, :2]))[0], atol=1e-6)
    np.testing.assert_allclose(packed[0, 2:], np.asarray(layer(x[:, 2:]))[0], atol=1e-6)
    edited = x.copy()
    edited[0, 2:] += 1.0
    np.testing.assert_allclose(np.asarray(layer(edited, padding_mask=mask))[0, :2], packed[0, :2], atol=1e-6)


def test_bidirectional_layer_refuses_a_cache():
    with pytest.raises(ValueError, match="causal=False"):
        CausalSelfAttention(num_heads=2, causal=False)(_inputs(), cache=(np.zeros((4, 4, 8), "float32"),
                                                                         np.zeros((4, 8, 4), "float32")), cache_index=0)


def _seed_states(layer):
    return [np.asarray(v) for v in layer.non_trainable_variables]  # the dropouts' seed-generator states


def test_training_draws_a_mask_at_both_dropouts():
    """Dropout on the attention weights and on the output: a training call draws a mask at each (its seed
    generator advances), an inference call at neither."""
    layer = CausalSelfAttention(num_heads=2, dropout=0.5)
    x = _inputs()
    layer(x)
    before = _seed_states(layer)
    layer(x)
    assert len(before) == 2 and all(np.array_equal(a, b) for a, b in zip(before, _seed_states(layer)))
    layer(x, training=True)
    assert not any(np.array_equal(a, b) for a, b in zip(before, _seed_states(layer)))


def test_config_keeps_every_argument():
    layer = CausalSelfAttention(num_heads=4, dropout=0.25, causal=False, output_kernel_initializer="zeros",
                                kernel_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=1))
    clone = CausalSelfAttention.from_config(layer.get_config())
    assert (clone.num_heads, clone.dropout, clone.causal) == (4, 0.25, False)
    assert keras.initializers.serialize(clone.kernel_initializer) == keras.initializers.serialize(
        layer.kernel_initializer)
    assert isinstance(clone.output_kernel_initializer, keras.initializers.Zeros)


def test_the_output_projection_takes_the_output_initializer():
    # TransformerLM scales the projections that write into the residual stream by 1/sqrt(2·n_layer) this way.
    layer = CausalSelfAttention(num_heads=2, output_kernel_initializer="zeros")
    layer.build((2, 5, 8))
    assert not np.any(np.asarray(layer.output_dense.kernel)) and np.all(np.asarray(layer.qkv_dense.kernel) != 0)
