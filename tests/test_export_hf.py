import json

import numpy as np
import pytest
import transformers
from conftest import TEXT, failure_line, run_module

from experiments.export_hf import export_hf
from tf_lm import LMConfig, TransformerLM
from tf_lm.artifacts import save_model_dir
from tf_lm.convert import from_gpt2_safetensors, save_gpt2_checkpoint
from tf_lm.data import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer
from tf_lm.data.tokenizers import END_OF_TEXT


def _model_dir(path, kind):
    tokenizer = build_tokenizer(kind, TEXT, vocab_size=300 if kind == "bpe" else None)
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_model_dir(str(path), model, tokenizer)
    return model, tokenizer


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_export_round_trips_and_hf_reads_the_tokenizer(tmp_path, kind):
    model, tokenizer = _model_dir(tmp_path / "model", kind)
    out = tmp_path / "hf"
    export_hf(str(tmp_path / "model"), str(out))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    ids = np.array([tokenizer.encode(TEXT)[:16]], dtype="int32")
    np.testing.assert_allclose(np.asarray(from_gpt2_safetensors(str(out))(ids)), np.asarray(model(ids)), atol=1e-5)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    sample = "Speak,  speak!\n\nAll: hear me." if kind == "bpe" else "Speak,  speak.\n\nAll: hear me."
    assert hf_tokenizer(sample)["input_ids"] == tokenizer.encode(sample)
    assert hf_tokenizer.decode(tokenizer.encode(sample)) == sample
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == tokenizer.eos_id
    export_hf(str(tmp_path / "model"), str(out))  # a second export replaces the first


def test_bad_input_fails_in_one_line(tmp_path):
    _model_dir(tmp_path / "model", "char")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = run_module("experiments.export_hf", f"--model_dir={tmp_path / 'model'}", f"--output_dir={foreign}")
    assert "not one of ours" in failure_line(result)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    with pytest.raises(FileNotFoundError, match="model.keras"):
        export_hf(str(tmp_path / "missing"), str(tmp_path / "out"))


def test_a_char_export_reads_back_as_the_char_tokenizer(tmp_path):
    _, tokenizer = _model_dir(tmp_path / "model", "char")
    export_hf(str(tmp_path / "model"), str(tmp_path / "hf"))
    loaded = load_tokenizer(str(tmp_path / "hf"))  # as --init_from, prepare_data --tokenizer_dir read it
    assert isinstance(loaded, CharTokenizer) and loaded.fingerprint == tokenizer.fingerprint
    assert loaded.encode(TEXT) == tokenizer.encode(TEXT)
    with pytest.raises(ValueError, match=r"Character 'Z' \(U\+005A\) at position 4 is not in this") as error:
        loaded.encode_batch(["All Z"])
    assert "\n" not in str(error.value)


def _export(tokenizer, directory):
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_gpt2_checkpoint(model, str(directory), tokenizer)
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def test_a_char_exports_unknown_token_is_its_unknown_character(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT, unknown_token="?", end_of_text=True)
    hf_tokenizer = _export(tokenizer, tmp_path)
    assert hf_tokenizer.unk_token == "?" and hf_tokenizer.eos_token == END_OF_TEXT
    assert len(hf_tokenizer) == tokenizer.vocab_size
    assert hf_tokenizer("Zebra?")["input_ids"] == tokenizer.encode("Zebra?")  # unseen characters map to '?'


def _byte_level_bpe(add_prefix_space, special_tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=280, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return BPETokenizer(tokenizer)


@pytest.mark.parametrize("add_prefix_space, special_tokens", [(False, []), (True, [END_OF_TEXT])],
                         ids=["no_end_of_text", "prefix_space"])
def test_a_third_party_bpe_exports_to_the_same_ids(tmp_path, add_prefix_space, special_tokens):
    """A tokenizer.json read as-is (--init_from, --tokenizer_dir) may lack <|endoftext|> or add a prefix space:
    GPT2TokenizerFast must neither add <|endoftext|> as a new id nor reset the prefix space."""
    tokenizer = _byte_level_bpe(add_prefix_space, special_tokens)
    hf_tokenizer = _export(tokenizer, tmp_path)
    assert len(hf_tokenizer) == tokenizer.vocab_size
    assert hf_tokenizer.eos_token_id == tokenizer.eos_id
    sample = f"Speak, speak.{END_OF_TEXT}All:"
    assert hf_tokenizer(sample)["input_ids"] == tokenizer.encode(sample)
