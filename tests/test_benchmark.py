"""experiments.benchmark end to end: a quick run writes the JSON and the table; an unknown section fails in one
line; the speculative section's distillation corpus keeps the target's vocabulary."""

import json

import numpy as np
import pytest
from conftest import failure_line, run_module

from experiments.benchmarks import SECTIONS


def run_benchmark(*args):
    return run_module("experiments.benchmark", "--quick", *args, timeout=900)


def check_quick_run(tmp_path, sections):
    output = tmp_path / "results.json"
    result = run_benchmark(f"--sections={','.join(sections)}", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert {row["section"] for row in rows} == set(sections)
    for row in rows:
        assert row["ours"] > 0, row
        if row["peer"] is not None:
            assert row["ratio"] == pytest.approx(row["ours"] / row["peer"])
        assert f"| {row['section']} | {row['name']} | {row['unit']} |" in result.stdout
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]  # no temporary left beside it


def test_quick_data_section_writes_json_and_table(tmp_path):
    check_quick_run(tmp_path, ["data"])


@pytest.mark.slow
def test_quick_run_of_every_section(tmp_path):
    check_quick_run(tmp_path, list(SECTIONS))


def test_unknown_section_fails_in_one_line_and_writes_nothing(tmp_path):
    output = tmp_path / "results.json"
    result = run_benchmark("--sections=data,bogus", f"--output={output}")
    last = failure_line(result)
    assert last == f"error: Unknown benchmark sections ['bogus']; choose from {list(SECTIONS)}.", last
    assert result.stderr.strip() == last  # the whole message: no usage text around it
    assert not output.exists()


def test_distillation_corpus_keeps_the_targets_vocabulary(tmp_path, monkeypatch):
    # The draft's train_lm run takes its char vocabulary from the corpus: it must be the target's, or the draft
    # cannot draft for it. A target that emits its end-of-text id (decoded as "<|endoftext|>") would break it.
    from experiments.benchmarks import speculative
    from tf_lm import LMConfig, TransformerLM
    from tf_lm.data import TokenStore, build_tokenizer
    from tf_lm.generation import generate

    text = (speculative.SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tokenizer = build_tokenizer("char", text)
    target = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    # The worst case: every new token is the end-of-text id (the final norm outputs its bias alone, whose product
    # with the end-of-text embedding dwarfs every other logit).
    direction = np.ones(16, np.float32)
    target.final_norm.gamma.assign(np.zeros(16, np.float32))
    target.final_norm.beta.assign(direction)
    table = target.embedding.token_embeddings
    table.assign(np.concatenate([table.numpy()[:-1], 100 * direction[None]]))
    monkeypatch.setattr(speculative, "DISTILL_PROMPTS", 4)
    monkeypatch.setattr(speculative, "DISTILL_BATCH", 2)
    monkeypatch.setattr(speculative, "DISTILL_NEW_TOKENS", 8)
    source = speculative._distillation_corpus(target, tokenizer, str(tmp_path / "corpus"))
    assert generate(target, [[0]], max_new_tokens=4, sampler="temperature", seed=0) == [[tokenizer.eos_id] * 4]
    store = TokenStore(source.removeprefix("store:"))
    assert store.tokenizer.fingerprint == tokenizer.fingerprint
    assert store.num_tokens("train") > 0 and store.num_tokens("validation") > 0
