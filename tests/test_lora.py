import keras
import numpy as np
import pytest

from tf_lm import LMConfig, TransformerLM
from tf_lm.training.lora import enable_lora, lora_targets

CONFIG = LMConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)
IDS = np.arange(32, dtype="int32").reshape(2, 16) % 30


def _size(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_fresh_factors_change_nothing_and_only_they_train():
    model = TransformerLM(CONFIG)
    before, base = np.asarray(model(IDS)), list(model.trainable_variables)
    frozen = enable_lora(model, rank=4, alpha=8.0)
    np.testing.assert_allclose(np.asarray(model(IDS)), before, atol=1e-6)  # B starts at zero
    assert {id(v) for v in frozen} == {id(v) for v in base}
    d = CONFIG.n_embd
    assert _size(model.trainable_variables) == CONFIG.n_layer * 4 * (4 * d + 2 * d + 5 * d + 5 * d)


def test_embeddings_adds_factors_of_the_tied_token_table():
    model = TransformerLM(CONFIG)
    enable_lora(model, rank=4, embeddings=True)
    table = model.embedding.token_embedding
    assert table.lora_enabled and not table._embeddings.trainable
    d = CONFIG.n_embd
    assert _size(model.trainable_variables) == CONFIG.n_layer * 4 * 16 * d + 4 * (CONFIG.vocab_size + d)


def test_train_norms_adds_every_layernorm():
    model = TransformerLM(CONFIG)
    frozen = enable_lora(model, rank=1, train_norms=True)
    norms = [v for v in model.trainable_variables if "lora_kernel" not in v.path]
    assert len(norms) == 2 * (2 * CONFIG.n_layer + 1) and all(len(v.shape) == 1 for v in norms)
    # Checkpoints leave the frozen variables out: a trained norm listed there would revert on a resume.
    assert frozen and not any(v.trainable for v in frozen)
    assert {id(v) for v in frozen} == {id(v) for v in model.weights} - {id(v) for v in model.trainable_variables}


def test_saving_merges_the_factors_into_a_plain_model(tmp_path):
    model = TransformerLM(CONFIG)
    base_weights = len(model.weights)
    before = np.asarray(model(IDS))
    enable_lora(model, rank=2, alpha=8.0, embeddings=True)  # scale alpha / rank = 4: a merge must apply it
    rng = np.random.default_rng(0)
    table = model.embedding.token_embedding
    for factor in [layer.lora_kernel_b for layer in lora_targets(model)] + [table.lora_embeddings_b]:
        factor.assign(rng.normal(scale=0.1, size=factor.shape).astype("float32"))
    unmerged = np.asarray(model(IDS))
    assert not np.allclose(unmerged, before, atol=1e-3)
    model.save(str(tmp_path / "model.keras"))
    merged = keras.models.load_model(str(tmp_path / "model.keras"), safe_mode=True)
    layers = lora_targets(merged) + [merged.embedding.token_embedding]
    assert len(merged.weights) == base_weights and not any(layer.lora_enabled for layer in layers)
    np.testing.assert_allclose(np.asarray(merged(IDS)), unmerged, atol=1e-5)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_save_merges_in_float32(tmp_path, precision):
    # Keras merges in the compute dtype: every saved kernel and the table came back rounded to 16 bits.
    model = TransformerLM(CONFIG, dtype=precision)
    enable_lora(model, rank=2, alpha=4.0, embeddings=True)
    rng = np.random.default_rng(0)
    table = model.embedding.token_embedding
    for factor in [layer.lora_kernel_b for layer in lora_targets(model)] + [table.lora_embeddings_b]:
        factor.assign(rng.normal(scale=0.1, size=factor.shape).astype("float32"))
    expected = [np.asarray(layer._kernel) + 2.0 * np.asarray(layer.lora_kernel_a) @ np.asarray(layer.lora_kernel_b)
                for layer in lora_targets(model)]
    expected.append(np.asarray(table._embeddings)
                    + 2.0 * np.asarray(table.lora_embeddings_a) @ np.asarray(table.lora_embeddings_b))
    model.save(str(tmp_path / "model.keras"))
    merged = keras.models.load_model(str(tmp_path / "model.keras"), safe_mode=True)
    saved = [np.asarray(layer.kernel) for layer in lora_targets(merged)]
    saved.append(np.asarray(merged.embedding.token_embedding.embeddings))
    for got, want in zip(saved, expected):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rank, alpha, message", [
    (0, None, "rank=0"), (True, None, "rank=True"), (2, -1.0, "alpha=-1.0"), (2, float("nan"), "alpha=nan"),
    (2, float("inf"), "alpha=inf"),
])
def test_bad_settings_are_refused(rank, alpha, message):
    with pytest.raises(ValueError, match=message):
        enable_lora(TransformerLM(CONFIG), rank=rank, alpha=alpha)
