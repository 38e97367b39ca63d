import json

import numpy as np
import pytest
import transformers
from safetensors.numpy import save_file

from tf_lm import LMConfig, TransformerLM
from tf_lm.convert import from_gpt2_safetensors, from_hf_gpt2, gpt2_state_from_hf, load_gpt2_state


@pytest.fixture(scope="module")
def hf_gpt2():
    config = transformers.GPT2Config(
        vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    model = transformers.TFGPT2LMHeadModel(config)
    model(model.dummy_inputs)
    # Random biases and LayerNorm parameters too, so a transposed or swapped tensor cannot hide behind zeros/ones.
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(rng.normal(scale=0.1, size=weight.shape).astype("float32") + weight.numpy())
    return model


def _ids(seed=0):
    return np.random.default_rng(seed).integers(0, 97, size=(3, 24)).astype("int32")


def test_logits_match_hf_within_1e_4(hf_gpt2):
    ids = _ids()
    expected = hf_gpt2(ids).logits.numpy()
    np.testing.assert_allclose(np.asarray(from_hf_gpt2(hf_gpt2)(ids)), expected, atol=1e-4)


def test_padded_logits_match_hf(hf_gpt2):
    ids = _ids(1)
    mask = np.ones_like(ids)
    mask[:, 15:] = 0
    expected = hf_gpt2(ids, attention_mask=mask).logits.numpy()
    ours = np.asarray(from_hf_gpt2(hf_gpt2)(ids, padding_mask=mask))
    np.testing.assert_allclose(ours[:, :15], expected[:, :15], atol=1e-4)


def test_safetensors_checkpoint_loads_through_numpy(hf_gpt2, tmp_path):
    state = {f"transformer.{k}": v for k, v in gpt2_state_from_hf(hf_gpt2).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_gpt2.config.to_dict()))
    ids = _ids(2)
    np.testing.assert_allclose(
        np.asarray(from_gpt2_safetensors(str(tmp_path))(ids)), hf_gpt2(ids).logits.numpy(), atol=1e-4
    )


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_gpt2_safetensors(str(tmp_path))


def test_shape_mismatch_is_refused(hf_gpt2):
    wrong = TransformerLM(LMConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=16))
    with pytest.raises(ValueError, match="Shape mismatch for 'wte.weight'"):
        load_gpt2_state(wrong, gpt2_state_from_hf(hf_gpt2))
