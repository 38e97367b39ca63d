import dataclasses
import json

import numpy as np
import pytest
from conftest import CONFIG, TEXT, copy_to_tensorflow_filesystem, hf_dir, tf_lm_dir

from tf_lm import TransformerLM
from tf_lm.convert import load_gpt2_state, save_gpt2_checkpoint
from tf_lm.pretrained import check_config, pretrained_config, read_pretrained


def _ids(vocab, time=16, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(2, time)).astype("int32")


def test_a_tf_lm_directory_reads_into_the_same_model(tmp_path):
    model, tokenizer = tf_lm_dir(tmp_path)
    base = read_pretrained(str(tmp_path))
    assert base.config == model.config and base.tokenizer.fingerprint == tokenizer.fingerprint
    assert pretrained_config(str(tmp_path)) == (model.config, "char")
    ids = _ids(tokenizer.vocab_size)
    copy = load_gpt2_state(TransformerLM(base.config), base.state_for(base.config))
    np.testing.assert_allclose(np.asarray(copy(ids)), np.asarray(model(ids)), atol=1e-6)


def test_block_size_crops_the_positions(tmp_path):
    model, tokenizer = tf_lm_dir(tmp_path)
    base = read_pretrained(str(tmp_path))
    short = dataclasses.replace(base.config, block_size=8, dropout=0.1)
    state = base.state_for(short)
    assert state["wpe.weight"].shape == (8, 16)
    cropped = load_gpt2_state(TransformerLM(short), state)
    ids = _ids(tokenizer.vocab_size, time=8)
    np.testing.assert_allclose(np.asarray(cropped(ids)), np.asarray(model(ids)), atol=1e-6)


def test_an_hf_directory_reads_with_its_gpt2_tokenizer(tmp_path):
    hf, tokenizer = hf_dir(tmp_path)
    base = read_pretrained(str(tmp_path))
    assert pretrained_config(str(tmp_path))[1] == "bpe"
    assert base.tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    ids = _ids(tokenizer.vocab_size)
    model = load_gpt2_state(TransformerLM(base.config), base.state)
    np.testing.assert_allclose(np.asarray(model(ids)), hf(ids).logits.numpy(), atol=1e-4)
    assert base.fingerprint == read_pretrained(str(tmp_path)).fingerprint


def test_an_hf_export_of_a_char_model_reads_with_its_char_tokenizer(tmp_path):
    """The tokenizer kind that --init_from takes from pretrained_config must be the one read_pretrained reads."""
    model, tokenizer = tf_lm_dir(tmp_path / "run")
    save_gpt2_checkpoint(model, str(tmp_path / "hf"), tokenizer)
    assert pretrained_config(str(tmp_path / "hf")) == (model.config, "char")
    base = read_pretrained(str(tmp_path / "hf"))
    assert base.tokenizer.is_char_level and base.tokenizer.fingerprint == tokenizer.fingerprint


def test_an_hf_export_whose_tokenizer_was_edited_since_is_refused(tmp_path):
    """Two characters' ids swapped in tokenizer.json: it loaded (as a generic tokenizer), and each character took
    the other's pretrained embedding."""
    model, tokenizer = tf_lm_dir(tmp_path / "run")
    save_gpt2_checkpoint(model, str(tmp_path / "hf"), tokenizer)
    path = tmp_path / "hf" / "tokenizer.json"
    saved = json.loads(path.read_text())
    vocab = saved["model"]["vocab"]
    vocab["a"], vocab["e"] = vocab["e"], vocab["a"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"The tokenizer files in '.*hf' are not the ones exported with its weights"):
        read_pretrained(str(tmp_path / "hf"))


@pytest.mark.parametrize("write", [tf_lm_dir, hf_dir], ids=["tf_lm", "hf"])
def test_both_formats_read_from_a_tensorflow_filesystem(tmp_path, write):
    write(tmp_path)
    remote = f"ram://pretrained-{write.__name__}"
    copy_to_tensorflow_filesystem(tmp_path, remote)
    local, base = read_pretrained(str(tmp_path)), read_pretrained(remote)
    assert pretrained_config(remote) == pretrained_config(str(tmp_path))
    assert base.fingerprint == local.fingerprint and base.tokenizer.fingerprint == local.tokenizer.fingerprint


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pretrained(str(tmp_path / "missing"))
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="weights.safetensors' is a file, not a directory"):
        read_pretrained(str(tmp_path / "weights.safetensors"))
    (tmp_path / "weights.safetensors").unlink()
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a tf_lm model directory .* nor an HF GPT-2 checkpoint"):
        read_pretrained(str(tmp_path / "neither"))
    for weights, named in (("model.safetensors.index.json", "sharded weights"), ("pytorch_model.bin", "pickle")):
        (tmp_path / "neither" / weights).write_text("{}")
        with pytest.raises(ValueError, match=f"is an HF checkpoint with .*{named}.*; only a single model.safetensors"):
            read_pretrained(str(tmp_path / "neither"))
        (tmp_path / "neither" / weights).unlink()
    hf_dir(tmp_path / "small_vocab", vocab_size=100)  # the tokenizer has more ids than the model
    with pytest.raises(ValueError, match="has .* ids but the model only 100"):
        read_pretrained(str(tmp_path / "small_vocab"))
    hf_dir(tmp_path / "bert")
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    del config["n_embd"]
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match=r"config.json is not a GPT-2 config tf_lm loads: the config has no n_embd, "
                                         "which every GPT-2 config has"):
        read_pretrained(str(tmp_path / "bert"))
    # The file's keys are not the script's flags: no backticks for `in_flag_terms` to turn into --n_head.
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "n_embd": 32, "n_head": "4"}))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'bert' / 'config.json'} is not a GPT-2 config tf_lm loads: "
                                         r"n_head must be [^`]*$"):
        read_pretrained(str(tmp_path / "bert"))


def test_a_contradicting_config_is_refused():
    with pytest.raises(ValueError, match=r"`n_layer=3` \(the checkpoint has 2\)"):
        check_config(dataclasses.replace(CONFIG, n_layer=3), CONFIG, "base")
    with pytest.raises(ValueError, match="`block_size=32` exceeds the 16 positions"):
        check_config(dataclasses.replace(CONFIG, block_size=32), CONFIG, "base")
    check_config(dataclasses.replace(CONFIG, block_size=8, dropout=0.2), CONFIG, "base")


def test_train_lm_names_its_flags_in_the_contradictions():
    """`experiments.train_lm --init_from` prints the fields in backticks that are its flags as flags."""
    from absl import flags

    from experiments.flags import define_train_flags, in_flag_terms

    script_flags = flags.FlagValues()
    define_train_flags(script_flags)
    with pytest.raises(ValueError) as error:
        check_config(dataclasses.replace(CONFIG, n_layer=3), CONFIG, "base")
    assert in_flag_terms(str(error.value), script_flags) == (
        "The model config contradicts the checkpoint in 'base': --n_layer=3 (the checkpoint has 2); the architecture "
        "comes from the checkpoint, so leave it (and --preset) unset.")
    with pytest.raises(ValueError) as error:
        check_config(dataclasses.replace(CONFIG, block_size=32), CONFIG, "base")
    assert in_flag_terms(str(error.value), script_flags) == (
        "--block_size=32 exceeds the 16 positions of the checkpoint in 'base'; use a --block_size <= 16.")
