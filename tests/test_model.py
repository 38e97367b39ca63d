import math

import keras
import numpy as np
import pytest

from tf_lm import LMConfig, TransformerLM
from tf_lm.configs import PRESETS

TINY = LMConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=8)


def _ids(batch=2, time=10, seed=0, vocab=13):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, time)).astype("int32")


def test_logits_shape_and_dtype():
    logits = TransformerLM(TINY)(_ids())
    assert tuple(logits.shape) == (2, 10, 13) and logits.dtype == "float32"


def test_causality():
    model = TransformerLM(TINY)
    ids = _ids()
    reference = np.asarray(model(ids))
    for k in range(1, 10):
        edited = ids.copy()
        edited[:, k:] = _ids(seed=k)[:, k:]
        np.testing.assert_allclose(np.asarray(model(edited))[:, :k], reference[:, :k], atol=1e-5)


def test_prefill_then_cached_steps_equal_one_full_pass():
    model = TransformerLM(TINY)
    ids = _ids(time=12)
    full = np.asarray(model(ids))
    cache = model.init_cache(batch_size=2, max_length=np.int64(16))
    logits, cache = model.call_with_cache(ids[:, :5], cache, cache_index=0)
    pieces = [np.asarray(logits)]
    for t in np.arange(5, 12):  # int64 indices, as a counter from numpy is
        logits, cache = model.call_with_cache(ids[:, t : t + 1], cache, cache_index=t)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)
    # Past the cache's end a write would land on its last slots (XLA clamps the index): refused instead.
    with pytest.raises(ValueError, match="writes 1 token\\(s\\) at cache_index 16 into a cache of 16 slots"):
        model.call_with_cache(ids[:, :1], cache, cache_index=16)
    with pytest.raises(ValueError, match="writes 5 token"):
        model.call_with_cache(ids[:, :5], cache, cache_index=np.array([0, 12]))


def test_real_positions_ignore_what_padding_holds():
    # Left padding (before the real tokens, where the causal mask cannot hide it) and weights of std 0.5, so a
    # padded key that leaks moves the logits visibly.
    model = TransformerLM(TINY)
    ids = _ids()
    model(ids)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim == 2 else w
                       for w in model.get_weights()])
    padding_mask = np.ones_like(ids)
    padding_mask[0, :4] = 0
    edited = ids.copy()
    edited[0, :4] = (ids[0, :4] + 5) % 13
    a = np.asarray(model(ids, padding_mask=padding_mask))
    b = np.asarray(model(edited, padding_mask=padding_mask))
    np.testing.assert_allclose(a[0, 4:], b[0, 4:], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_score_is_the_chain_rule():
    model = TransformerLM(TINY)
    ids = _ids()
    out = model.score(ids)
    logits = np.asarray(model(ids), dtype="float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_probs[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(out["token_log_probs"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["log_likelihood"]), expected.sum(-1), atol=1e-4)


def test_score_honours_padding():
    model = TransformerLM(TINY)
    ids = _ids()
    padding_mask = np.ones_like(ids)
    padding_mask[0, 7:] = 0
    out = model.score(ids, padding_mask=padding_mask)
    alone = model.score(ids[:1, :7])
    np.testing.assert_allclose(np.asarray(out["token_log_probs"])[0, 6:], 0.0)
    np.testing.assert_allclose(np.asarray(out["log_likelihood"])[0], np.asarray(alone["log_likelihood"])[0], atol=1e-5)


def test_a_left_padded_row_scores_as_it_does_alone():
    model = TransformerLM(TINY)
    ids = _ids()
    padded = np.concatenate([np.full((2, 3), 7, ids.dtype), ids[:, :9]], axis=1)  # 3 pad tokens, then 9 real
    padding_mask = np.concatenate([np.zeros((2, 3), "int32"), np.ones((2, 9), "int32")], axis=1)
    out = model.score(padded, padding_mask=padding_mask)
    alone = model.score(ids[:, :9])
    np.testing.assert_allclose(np.asarray(out["token_log_probs"])[:, :3], 0.0)  # padding and the condition
    np.testing.assert_allclose(np.asarray(out["token_log_probs"])[:, 3:], np.asarray(alone["token_log_probs"]),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["log_likelihood"]), np.asarray(alone["log_likelihood"]), atol=1e-5)


def test_too_long_input_names_the_fix():
    with pytest.raises(ValueError, match="exceeds the model's context block_size=16"):
        TransformerLM(TINY)(_ids(time=17))


@pytest.mark.parametrize("ids, message", [
    (np.array([[0, -1]], "int32"), r"token ids must be in \[0, vocab_size=13\). Received: ids from -1 to 0"),
    (np.array([[0, 13]], "int32"), r"ids from 0 to 13"),
    (np.array([1, 2], "int32"), r"token_ids must be \[batch, time\]. Received: shape=\(2,\)"),
    (np.array([[0, 1.7]], "float32"), r"token_ids must be integers. Received: token_ids of dtype float32"),
])
def test_bad_token_ids_are_refused_in_one_line(ids, message):
    """A gather wraps a negative id, and on a GPU reads zeros past the table: both silently (and truncates 1.7)."""
    model = TransformerLM(TINY)
    with pytest.raises(ValueError, match=message):
        model(ids)
    if ids.ndim == 2:
        with pytest.raises(ValueError, match=message):
            model.call_with_cache(ids, model.init_cache(1, 4), 0)


@pytest.mark.parametrize("position_ids, message", [
    (np.full((2, 3), -1, "int32"), r"position ids must be in \[0, block_size=16\). Received: ids from -1 to -1"),
    (np.full((2, 3), 16, "int32"), r"position ids must be in \[0, block_size=16\). Received: ids from 16 to 16"),
    (np.zeros((2, 2), "int32"), r"position_ids must have the shape of token_ids, \(2, 3\). Received: shape=\(2, 2\)"),
    (np.zeros((2, 3), "float32"), r"position_ids must be integers. Received: position_ids of dtype float32"),
])
def test_bad_position_ids_are_refused_in_one_line(position_ids, message):
    """A negative position wrapped to the table's last rows silently; one past it was a raw gather error."""
    model = TransformerLM(TINY)
    ids = _ids(time=3)
    with pytest.raises(ValueError, match=message):
        model(ids, position_ids=position_ids)
    with pytest.raises(ValueError, match=message):
        model.call_with_cache(ids, model.init_cache(2, 4), 0, position_ids=position_ids)


@pytest.mark.parametrize("padding_mask, message", [
    (np.ones((2, 4)), r"padding_mask must be \[batch, time\] = \(2, 3\). Received: shape=\(2, 4\)"),
    (np.ones((3, 3)), r"Received: shape=\(3, 3\)"),
    (np.ones(2), r"Received: shape=\(2,\)"),
])
def test_a_wrongly_shaped_padding_mask_is_refused_in_one_line(padding_mask, message):
    model = TransformerLM(TINY)
    with pytest.raises(ValueError, match=message):
        model(_ids(time=3), padding_mask=padding_mask)
    # With a cache the mask covers the cache's slots, not the new tokens.
    with pytest.raises(ValueError, match=r"padding_mask must be \[batch, cache slots\] = \(2, 8\). Received: "
                                         r"shape=\(2, 3\)"):
        model.call_with_cache(_ids(time=3), model.init_cache(2, 8), 0, padding_mask=np.ones((2, 3)))


@pytest.mark.parametrize("cache_index, message", [
    (-1, r"cache_index must be >= 0. Received: cache_index=-1"),
    (np.array([2, -1], "int32"), r"cache_index must be >= 0. Received: cache_index=\[2, -1\]"),
    (np.array([0, 1, 2], "int32"), r"cache_index must be a scalar, or a slot per row: \[batch\] = \(2,\). "
                                   r"Received: shape=\(3,\)"),
    (1.5, r"cache_index must be integers. Received: cache_index of dtype float"),
    (np.array([1.0, 2.0]), r"cache_index must be integers. Received: cache_index of dtype float64"),
])
def test_bad_cache_index_is_refused_in_one_line(cache_index, message):
    """With position_ids, a negative index wrote the wrong cache slots silently; a float one was truncated."""
    model = TransformerLM(TINY)
    with pytest.raises(ValueError, match=message):
        model.call_with_cache(_ids(time=2), model.init_cache(2, 8), cache_index,
                              position_ids=np.array([[0, 1], [0, 1]], "int32"))


def test_a_cache_of_another_batch_is_refused_in_one_line():
    model = TransformerLM(TINY)
    with pytest.raises(ValueError, match=r"token_ids has 2 row\(s\) but the cache holds 3; use a cache from "
                                         r"init_cache\(2, ...\)\."):
        model.call_with_cache(_ids(time=2), model.init_cache(3, 8), 0)


def test_a_preset_name_is_refused_with_the_call_to_use():
    with pytest.raises(TypeError, match=r"use TransformerLM\(LMConfig.preset\('nano'\)\)"):
        TransformerLM("nano")


def test_config_round_trip_and_keras_file(tmp_path):
    model = TransformerLM(TINY, name="lm")
    clone = TransformerLM.from_config(model.get_config())
    assert clone.config == model.config and clone.get_config() == model.get_config()
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert isinstance(restored, TransformerLM)
    np.testing.assert_array_equal(np.asarray(restored(_ids())), np.asarray(model(_ids())))


def test_a_frozen_model_loads_frozen(tmp_path):
    model = TransformerLM(TINY)
    model.trainable = False
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert not restored.trainable and not restored.trainable_weights
    # As model.trainable = False leaves them: the sublayers and variables frozen too, not only the model's flag.
    assert not any(layer.trainable for layer in restored._flatten_layers())
    assert not any(variable.trainable for variable in restored.weights)
    assert restored.get_config() == model.get_config()


def test_tied_head_shares_the_token_embedding():
    model = TransformerLM(TINY)
    names = [v.path for v in model.trainable_variables]
    assert sum("token_embeddings" in n for n in names) == 1
    expected = (
        TINY.vocab_size * TINY.n_embd + TINY.block_size * TINY.n_embd + TINY.non_embedding_params()
    )
    assert model.count_params() == expected


def test_memorises_one_sequence_with_compile_and_fit():
    model = TransformerLM(TINY)
    ids = _ids(batch=1, time=16)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    # 150 steps in one epoch: per-epoch overhead would otherwise dominate this tiny model.
    model.fit(np.repeat(inputs, 150, axis=0), np.repeat(targets, 150, axis=0), batch_size=1, verbose=0)
    assert model.evaluate(inputs, targets, verbose=0) < 0.05


def test_trains_under_mixed_bfloat16_with_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = TransformerLM(TINY)
    assert model.compute_dtype == "bfloat16" and model.embedding.token_embeddings.dtype == "float32"
    ids = _ids(batch=4, time=16)
    assert model(ids).dtype == "float32"
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = model.evaluate(ids[:, :-1], ids[:, 1:], verbose=0)
    model.fit(np.repeat(ids[:, :-1], 8, axis=0), np.repeat(ids[:, 1:], 8, axis=0), batch_size=4, verbose=0)
    after = model.evaluate(ids[:, :-1], ids[:, 1:], verbose=0)
    assert np.isfinite(after) and after < before


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_full_and_cached_passes_give_the_head_the_same_table(policy, monkeypatch):
    """Scoring (call) and generation (call_with_cache) must see one model: the tied table rounded alike."""
    from tf_lm.layers.lm_head import TiedLMHead

    tables, call = [], TiedLMHead.call

    def recording_call(self, hidden, table):
        tables.append(table)
        return call(self, hidden, table)

    monkeypatch.setattr(TiedLMHead, "call", recording_call)
    keras.utils.set_random_seed(0)
    model = TransformerLM(TINY, dtype=policy)
    table = model.embedding.token_embedding.embeddings
    table.assign(table.numpy() + np.random.default_rng(0).normal(scale=1e-3, size=table.shape).astype("float32"))
    ids = _ids(batch=1, time=8)
    model(ids)
    model.call_with_cache(ids, model.init_cache(1, 8), 0)
    np.testing.assert_array_equal(np.asarray(tables[0]), np.asarray(tables[1]))


def test_embedding_lora_under_mixed_bfloat16_gives_call_and_cache_one_head(tmp_path):
    """call() read the tied table in the model's autocast scope, so Keras formed W + (alpha/r)·A·B from factors
    rounded to bfloat16; call_with_cache formed it in float32. Now both do, as the saved merged table does."""
    from tf_lm.training.lora import enable_lora

    model = TransformerLM(TINY, dtype="mixed_bfloat16")  # a per-model policy: the global one stays float32
    enable_lora(model, rank=2, embeddings=True)
    rng = np.random.default_rng(0)
    table = model.embedding.token_embedding
    for factor in (table.lora_embeddings_a, table.lora_embeddings_b):
        factor.assign(rng.normal(scale=0.3, size=factor.shape).astype("float32"))
    ids = _ids(time=8)
    full = np.asarray(model(ids))
    cached, _ = model.call_with_cache(ids, model.init_cache(2, 8), 0)
    np.testing.assert_allclose(np.asarray(cached), full, rtol=0, atol=1e-6)
    model.save(str(tmp_path / "model.keras"))
    merged = keras.models.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(np.asarray(merged(ids)), full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_two_initial_weight_tensors_are_equal(preset):
    # The preset's layer layout (depth, heads) at a small width, so even gpt2-xl's 48 blocks build quickly.
    layout = PRESETS[preset]
    config = LMConfig.preset(preset, vocab_size=11, block_size=11, n_embd=2 * layout.n_head)
    model = TransformerLM(config)
    random_weights = {}
    for variable in model.weights:
        values = np.asarray(variable)
        if np.unique(values).size > 1:  # biases start at 0 and LayerNorm scales at 1, by design
            random_weights[variable.path] = values.ravel()
    assert len(random_weights) == 2 + 4 * config.n_layer  # both embeddings; qkv, output, mlp_in, mlp_out per block
    # Same-shaped tensors must differ, and no tensor may start as a prefix of another one's values.
    seen = {}
    for path, values in random_weights.items():
        key = values[: min(len(v) for v in random_weights.values())].tobytes()
        assert key not in seen, f"{path} starts with the same values as {seen[key]}"
        seen[key] = path


def test_training_draws_a_mask_at_every_dropout():
    """The embedding's dropout and each block's three: a training call advances every seed generator."""
    model = TransformerLM(LMConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=8, dropout=0.1))
    states = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    before = [np.asarray(v) for v in states]
    model(_ids(), training=True)
    assert len(states) == 1 + 3 * 2
    assert not [v.path for v, b in zip(states, before) if np.array_equal(np.asarray(v), b)]


def test_residual_projections_start_at_gpt2s_scaled_init():
    """GPT-2's init: N(0, 0.02) for every kernel, but N(0, 0.02/sqrt(2·n_layer)) for the attention output and
    mlp_out, which write into the residual stream."""
    model = TransformerLM(LMConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32))
    residual = np.concatenate([np.ravel(d.kernel) for b in model.blocks for d in (b.attention.output_dense, b.mlp_out)])
    other = np.concatenate([np.ravel(d.kernel) for b in model.blocks for d in (b.attention.qkv_dense, b.mlp_in)])
    assert np.std(residual) == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.05)
    assert np.std(other) == pytest.approx(0.02, rel=0.05)
