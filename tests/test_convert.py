import json
import os
import sys

import numpy as np
import pytest
import transformers
from conftest import copy_to_tensorflow_filesystem, files_of, run_command
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

from tf_lm import LMConfig, TransformerLM
from tf_lm.convert import (
    config_from_gpt2,
    from_gpt2_safetensors,
    from_hf_gpt2,
    gpt2_config,
    gpt2_state_from_hf,
    load_gpt2_state,
    read_gpt2_config,
    read_gpt2_state,
    save_gpt2_checkpoint,
)


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
    # Left padding of different lengths (before the real tokens, where the causal mask cannot hide it).
    ids = _ids(1)
    mask = np.ones_like(ids)
    mask[0, :9] = 0
    mask[1, :3] = 0
    expected = hf_gpt2(ids, attention_mask=mask).logits.numpy()
    ours = np.asarray(from_hf_gpt2(hf_gpt2)(ids, padding_mask=mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4)


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


def test_tf_named_safetensors_from_hf_save_pretrained_load(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(str(tmp_path), safe_serialization=True)  # TF names: transformer/h_._0/ln_1/gamma:0
    ids = _ids(3)
    np.testing.assert_allclose(
        np.asarray(from_gpt2_safetensors(str(tmp_path))(ids)), hf_gpt2(ids).logits.numpy(), atol=1e-4
    )


def _random_lm():
    model = TransformerLM(LMConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32))
    rng = np.random.default_rng(1)
    for weight in model.weights:  # LayerNorms and biases away from 1 and 0, as in the hf_gpt2 fixture
        weight.assign(np.asarray(weight) + rng.normal(scale=0.1, size=weight.shape).astype("float32"))
    return model


def test_export_round_trips_within_1e_5(tmp_path):
    model = _random_lm()
    save_gpt2_checkpoint(model, str(tmp_path))
    ids = _ids(4)
    np.testing.assert_allclose(np.asarray(from_gpt2_safetensors(str(tmp_path))(ids)), np.asarray(model(ids)),
                               atol=1e-5)
    copy_to_tensorflow_filesystem(tmp_path, "ram://gpt2_round_trip")  # any tf.io.gfile filesystem reads alike
    np.testing.assert_allclose(np.asarray(from_gpt2_safetensors("ram://gpt2_round_trip")(ids)),
                               np.asarray(model(ids)), atol=1e-5)


def test_export_is_what_hf_reads_as_pytorch_gpt2(hf_gpt2, tmp_path):
    """Names, layout and metadata of a PyTorch `GPT2LMHeadModel` checkpoint, checked without torch: HF's own
    PyTorch->TF loader must find every weight in our file and give the source model's logits."""
    save_gpt2_checkpoint(from_hf_gpt2(hf_gpt2), str(tmp_path), eos_token_id=96)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert set(state) == {f"transformer.{name}" for name in gpt2_state_from_hf(hf_gpt2)}
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    config = transformers.GPT2Config.from_pretrained(str(tmp_path))
    assert config.architectures == ["GPT2LMHeadModel"] and config.eos_token_id == 96
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 96
    fresh = transformers.TFGPT2LMHeadModel(config)
    fresh(fresh.dummy_inputs)
    fresh, info = load_pytorch_state_dict_in_tf2_model(fresh, state, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = _ids(5)
    np.testing.assert_allclose(fresh(ids).logits.numpy(), hf_gpt2(ids).logits.numpy(), atol=1e-4)


def test_the_configs_read_back_in_transformers_as_written_and_need_no_transformers(tmp_path):
    config = LMConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=8, layer_norm_epsilon=1e-6)
    ours = gpt2_config(config, eos_token_id=96)
    assert {key: transformers.GPT2Config(**ours).to_dict()[key] for key in ours} == ours
    assert config_from_gpt2(ours) == config
    # Importing transformers would turn the process's tf.keras into tf_keras: the export must not.
    code = ("import sys, tf_lm; from tf_lm.convert import save_gpt2_checkpoint; from tf_lm import LMConfig, "
            "TransformerLM; save_gpt2_checkpoint(TransformerLM(LMConfig.preset('nano', vocab_size=11)), sys.argv[1],"
            " eos_token_id=3); assert 'transformers' not in sys.modules, 'transformers was imported'")
    result = run_command([sys.executable, "-c", code, str(tmp_path / "export")])
    assert result.returncode == 0, result.stderr[-2000:]
    generation = transformers.GenerationConfig.from_pretrained(str(tmp_path / "export"))
    assert (generation.bos_token_id, generation.eos_token_id) == (3, 3)


def test_pytorch_gpt2_loads_the_export_with_the_same_logits(tmp_path):
    """Runs where torch is installed (`pip install -e .[torch]`); skipped otherwise."""
    torch = pytest.importorskip("torch")
    model = _random_lm()
    save_gpt2_checkpoint(model, str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    ids = _ids(6)
    with torch.no_grad():
        logits = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits, np.asarray(model(ids)), atol=1e-4)


def test_a_model_gpt2_cannot_express_is_refused(tmp_path):
    model = _random_lm()
    model.blocks[0].mlp_in.enable_lora(2)  # unmerged LoRA factors: weights a GPT-2 checkpoint has no place for
    with pytest.raises(ValueError, match="no place for .*lora"):
        save_gpt2_checkpoint(model, str(tmp_path))


def test_the_export_replaces_only_an_earlier_export(tmp_path):
    model = _random_lm()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no tf_lm_export.json"):
        save_gpt2_checkpoint(model, str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]
    # A downloaded HF model has the files an export writes, but is not one: it is never replaced.
    save_gpt2_checkpoint(model, str(tmp_path / "export"))
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "README.md"):
        (downloaded / name).write_text(name)
    with pytest.raises(ValueError, match="holds no tf_lm_export.json, so it is not one of ours"):
        save_gpt2_checkpoint(model, str(downloaded))
    assert {path.name: path.read_text() for path in downloaded.iterdir()} == {
        name: name for name in ("config.json", "model.safetensors", "pytorch_model.bin", "README.md")}
    save_gpt2_checkpoint(model, str(tmp_path / "export"))  # an earlier export is replaced whole
    assert sorted(os.listdir(tmp_path / "export")) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tf_lm_export.json"]


def test_the_export_writes_to_a_tensorflow_filesystem(tmp_path, monkeypatch):
    model = _random_lm()
    monkeypatch.chdir(tmp_path)  # a remote path mistaken for a local one would land here
    save_gpt2_checkpoint(model, "ram://hf_export/out")
    assert not os.listdir(tmp_path)
    copy = from_gpt2_safetensors("ram://hf_export/out")
    ids = _ids() % model.config.vocab_size
    np.testing.assert_allclose(np.asarray(copy(ids)), np.asarray(model(ids)), atol=1e-6)


@pytest.mark.parametrize("key, value", [("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True),
                                        ("tie_word_embeddings", False)])
def test_gpt2_settings_without_an_equivalent_are_refused(hf_gpt2, tmp_path, key, value):
    config = {**hf_gpt2.config.to_dict(), key: value}
    with pytest.raises(ValueError, match=f"Only GPT-2 checkpoints with {key}=.* convert. Received: {key}={value}"):
        config_from_gpt2(config)


def test_an_untied_output_layer_is_refused(hf_gpt2):
    state = gpt2_state_from_hf(hf_gpt2)
    model = TransformerLM(config_from_gpt2(hf_gpt2.config.to_dict()))
    load_gpt2_state(model, {**state, "lm_head.weight": state["wte.weight"]})  # tied, written out: fine
    with pytest.raises(ValueError, match="lm_head.weight differs from its token embeddings"):
        load_gpt2_state(model, {**state, "lm_head.weight": state["wte.weight"] + 1.0})


def test_the_config_holds_what_llama_cpps_converter_reads():
    # convert_hf_to_gguf.py's GPT2Model.set_gguf_parameters reads these keys of config.json, n_ctx included.
    config = LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    written = gpt2_config(config)
    assert written["n_ctx"] == written["n_positions"] == config.block_size
    assert {key: written[key] for key in ("n_layer", "n_embd", "n_head", "layer_norm_epsilon")} == {
        "n_layer": 1, "n_embd": 8, "n_head": 2, "layer_norm_epsilon": config.layer_norm_epsilon}


def test_damaged_checkpoint_files_are_named_in_one_line(tmp_path):
    model = TransformerLM(LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_gpt2_checkpoint(model, str(tmp_path))
    weights = tmp_path / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # an interrupted download
    damaged = r"model.safetensors is damaged or incomplete \(.+\); replace it with an intact copy\.$"
    with pytest.raises(ValueError, match=damaged) as error:
        read_gpt2_state(str(tmp_path))
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "config.json").write_text("")
    with pytest.raises(ValueError, match=r"config.json is damaged: it is not valid JSON") as error:
        from_gpt2_safetensors(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"config.json is damaged: it holds an array, not an object"):
        read_gpt2_config(str(tmp_path))


def test_an_earlier_export_holding_a_users_file_is_not_replaced(tmp_path):
    model = TransformerLM(LMConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    out = tmp_path / "export"
    save_gpt2_checkpoint(model, str(out))
    (out / "export-F16.gguf").write_text("llama.cpp's converter writes here by default")
    before = files_of(out)
    with pytest.raises(ValueError, match=r"is an earlier Hugging Face GPT-2 checkpoint but also holds "
                                         r"'export-F16.gguf', which replacing it would delete, so it was left "
                                         r"untouched; move that file elsewhere"):
        save_gpt2_checkpoint(model, str(out))
    assert files_of(out) == before and os.listdir(tmp_path) == ["export"]
    (out / "export-F16.gguf").unlink()
    save_gpt2_checkpoint(model, str(out))  # only the export's own files: replaced as before
