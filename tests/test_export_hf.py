import json

import numpy as np
import pytest
import transformers
from conftest import TEXT, failure_line, run_module

from experiments.export_hf import export_hf
from tf_lm import LMConfig, TransformerLM
from tf_lm.artifacts import save_model_dir
from tf_lm.convert import from_gpt2_safetensors
from tf_lm.data import build_tokenizer


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
