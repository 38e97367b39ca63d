"""experiments/evaluate_lm.py: split metrics agree with a direct computation; --score prints log P(W)."""

import json
import math
import os

import numpy as np
import pytest
from conftest import failure_line, run_module

from experiments.evaluate_lm import evaluate_split, score_text
from tf_lm import LMConfig, TransformerLM
from tf_lm.artifacts import save_model_dir
from tf_lm.data import build_tokenizer, prepare_store
from tf_lm.data.store import DamagedStoreError

TEXT = "the cat sat on the mat. " * 40


@pytest.fixture()
def model_dir(tmp_path):
    tokenizer = build_tokenizer("char", TEXT)
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    save_model_dir(str(tmp_path / "model"), model, tokenizer)
    (tmp_path / "corpus.txt").write_text(TEXT)
    return tmp_path / "model", model, tokenizer


def test_split_loss_is_the_mean_token_nll(model_dir):
    path, model, tokenizer = model_dir
    # Weights of std 0.5, so windows (and batches) differ in loss: a mean of batch means then misses the token mean.
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim == 2 else w
                       for w in model.get_weights()])
    store = prepare_store(f"text:{path.parent / 'corpus.txt'}", str(path.parent / "store"), tokenizer=tokenizer,
                          validation_fraction=0.25)
    result = evaluate_split(model, tokenizer, store, "validation", batch_size=4)  # 15 windows: batches 4, 4, 4, 3
    ids = store.read("validation", 0, store.num_tokens("validation"))  # the last quarter of TEXT, then end-of-text
    np.testing.assert_array_equal(ids, tokenizer.encode(TEXT[-len(TEXT) // 4:]) + [tokenizer.eos_id])
    windows = np.stack([ids[i:i + 17] for i in range(0, len(ids) - 16, 16) if i + 17 <= len(ids)])  # (n, 17)
    logits = np.asarray(model(windows[:, :-1]), dtype=np.float64)  # (n, 16, V)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -float(np.mean(np.take_along_axis(log_probs, windows[:, 1:, None], -1)))
    assert windows.shape[0] == 15 and result["tokens"] == windows.shape[0] * 16
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["bits"] == pytest.approx(expected / math.log(2), rel=1e-6)
    other = prepare_store(f"text:{path.parent / 'corpus.txt'}", str(path.parent / "other"), tokenizer="bpe",
                          bpe_vocab_size=300)
    with pytest.raises(ValueError, match=r"^Token store .* was prepared with another tokenizer than the model's; "
                                         r"prepare it with .* --tokenizer_dir=<model_dir>/model/tokenizer.$"):
        evaluate_split(model, tokenizer, other, "validation")
    for bad in (0, -3):  # not "no limit"; evaluate_lm prints the argument as its flag (`in_flag_terms`)
        with pytest.raises(ValueError, match=f"^`max_batches` must be an integer >= 1 or None. Received: "
                                             f"`max_batches={bad}`$"):
            evaluate_split(model, tokenizer, store, "validation", max_batches=bad)


def test_score_sums_token_log_probs(model_dir):
    _, model, tokenizer = model_dir
    result = score_text(model, tokenizer, "the mat")
    assert result["tokens"][0] == "t" and len(result["token_log_probs"]) == 6
    assert result["log_likelihood"] == pytest.approx(sum(result["token_log_probs"]), rel=1e-5)
    with pytest.raises(ValueError, match="more than the model's context of 16"):
        score_text(model, tokenizer, "t" * 17)


def test_script_reports_and_scores(model_dir):
    path, _, _ = model_dir
    corpus = f"--dataset=text:{path.parent / 'corpus.txt'}"
    args = ["experiments.evaluate_lm", f"--model_dir={path}", corpus]
    out = run_module("experiments.evaluate_lm", f"--model_dir={path}", "--score=the cat", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "log P(W) = " in out.stdout and "over 6 predicted tokens" in out.stdout
    out = run_module(*args, "--split=train", "--score=the cat", timeout=120)  # a split's flags would be ignored
    assert failure_line(out) == "error: --score scores its own text, not a split; drop --dataset, --split."
    out = run_module(*args, "--split=train", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "perplexity" in out.stdout and "bits/char" in out.stdout
    out = run_module("experiments.evaluate_lm", f"--model_dir={path}", f"--dataset=store:{path.parent / 'store'}",
                     "--validation_fraction=0.5")
    assert failure_line(out) == (f"error: --dataset=store:{path.parent / 'store'} is prepared already (its splits "
                                 "are the store's); drop --validation_fraction.")
    out = run_module("experiments.evaluate_lm", f"--model_dir={path.parent / 'none'}", timeout=120)
    assert out.returncode != 0 and "error: No model.keras" in out.stderr and "Traceback" not in out.stderr


def test_the_runs_own_split_is_evaluated_unless_a_flag_says_otherwise(model_dir):
    from absl import flags

    from experiments.evaluate_lm import run_source_options
    from experiments.flags import define_data_flags

    path, _, _ = model_dir
    dataset = f"text:{path.parent / 'corpus.txt'}"
    # A run trained with 5% held out: the default 10% would score training text as validation.
    (path / "run_config.json").write_text(json.dumps({"model": {}, "train": {"dataset": dataset},
                                                      "data": {"validation_fraction": 0.05}}))

    def validation_fraction(*args):
        values = flags.FlagValues()
        define_data_flags(values)
        flags.DEFINE_string("model_dir", str(path), "", flag_values=values)
        values(["evaluate_lm", *args])
        return run_source_options(values)["validation_fraction"]

    assert validation_fraction(f"--dataset={dataset}") == 0.05
    assert validation_fraction(f"--dataset={dataset}", "--validation_fraction=0.2") == 0.2
    assert validation_fraction("--dataset=builtin:pydoc") == 0.1  # another source than the run's
    # The same file spelled another way (relative to the current directory, a doubled "/") is the run's too.
    relative = os.path.relpath(path.parent / "corpus.txt")
    assert validation_fraction(f"--dataset=text:{relative}") == 0.05
    assert validation_fraction(f"--dataset=text:{path.parent}//corpus.txt") == 0.05
    # A run trained on a store prepared from that source with 5% held out: its run_config.json records it, or
    # (one written before it did) the store's manifest does.
    store = prepare_store(dataset, str(path.parent / "store"), validation_fraction=0.05)
    trained_on_store = {"model": {}, "train": {"dataset": f"store:{store.directory}"}, "data": {}}
    (path / "run_config.json").write_text(json.dumps({
        **trained_on_store, "store": {"source": dataset, "source_options": {"validation_fraction": 0.05}}}))
    assert validation_fraction(f"--dataset={dataset}") == 0.05
    assert validation_fraction("--dataset=builtin:pydoc") == 0.1
    (path / "run_config.json").write_text(json.dumps(trained_on_store))
    assert validation_fraction(f"--dataset={dataset}") == 0.05
    assert validation_fraction(f"--dataset={dataset}", "--validation_fraction=0.2") == 0.2


def test_score_takes_a_text_of_the_whole_context_and_refuses_a_single_token(model_dir):
    _, model, tokenizer = model_dir
    assert len(score_text(model, tokenizer, "t" * 16)["token_log_probs"]) == 15
    with pytest.raises(ValueError, match="at least 2 tokens"):
        score_text(model, tokenizer, "t")


def test_max_batches_bounds_the_batches_scored(model_dir, monkeypatch):
    import tensorflow as tf

    from tf_lm.training import metrics

    path, model, tokenizer = model_dir
    store = prepare_store(f"text:{path.parent / 'corpus.txt'}", str(path.parent / "store"), tokenizer=tokenizer,
                          validation_fraction=0.25)  # 15 windows of 16
    # Each token counted at a loss of 1, without the model: the count is what is checked, and compiles fast.
    monkeypatch.setattr(metrics, "summed_next_token_loss",
                        lambda model, inputs, targets: (tf.cast(tf.size(targets), tf.float32), tf.size(targets)))
    assert evaluate_split(model, tokenizer, store, "validation", batch_size=4, max_batches=2)["tokens"] == 2 * 4 * 16
    assert evaluate_split(model, tokenizer, store, "validation", batch_size=4)["tokens"] == 15 * 16


@pytest.mark.parametrize("flag", ["--batch_size=0", "--max_batches=0"])
def test_a_count_below_one_is_refused_when_the_flags_are_read(flag):
    """Before main runs, so before a corpus is prepared for the evaluation."""
    from absl import flags

    from experiments.evaluate_lm import define_flags

    values = flags.FlagValues()
    define_flags(values)
    with pytest.raises(flags.IllegalFlagValueError, match=rf"{flag}: 0 is not a positive integer"):
        values(["evaluate_lm", "--model_dir=m", flag])


def test_a_runs_relative_dataset_is_recognised_from_another_directory(model_dir, tmp_path, monkeypatch):
    from absl import flags

    from experiments.evaluate_lm import define_flags, run_source_options

    path, _, _ = model_dir
    # Trained from tmp_path as text:corpus.txt with 5% held out; train_lm also records the path from anywhere.
    (path / "run_config.json").write_text(json.dumps({
        "model": {}, "train": {"dataset": "text:corpus.txt"}, "dataset_path": f"text:{tmp_path / 'corpus.txt'}",
        "data": {"validation_fraction": 0.05}}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    values = flags.FlagValues()
    define_flags(values)
    values(["evaluate_lm", f"--model_dir={path}", "--dataset=text:../corpus.txt"])
    assert run_source_options(values)["validation_fraction"] == 0.05


def test_a_store_holding_an_id_outside_the_vocabulary_is_refused_not_scored_nan(model_dir):
    path, _, tokenizer = model_dir
    store = prepare_store(f"text:{path.parent / 'corpus.txt'}", str(path.parent / "store"), tokenizer=tokenizer)
    shard = path.parent / "store" / "validation-00000.bin"
    shard.write_bytes(b"\xff\xff" + shard.read_bytes()[2:])
    # --max_batches: a part of the split, whose reads check the ids they read (the whole split is checksummed first)
    out = run_module("experiments.evaluate_lm", f"--model_dir={path}", f"--dataset=store:{store.directory}",
                     "--max_batches=100")
    assert failure_line(out) == (f"error: Token store {store.directory!r} is damaged: validation-00000.bin holds id "
                                 f"65535 (at position 0), outside its tokenizer's {tokenizer.vocab_size} ids; "
                                 "prepare the store again into a new directory.")


def test_a_split_overwritten_with_valid_ids_is_refused_not_scored(model_dir):
    path, model, tokenizer = model_dir
    store = prepare_store(f"text:{path.parent / 'corpus.txt'}", str(path.parent / "store"), tokenizer=tokenizer)
    shard = path.parent / "store" / "validation-00000.bin"
    shard.write_bytes(bytes(shard.stat().st_size))  # all id 0: a valid id, of the right size
    with pytest.raises(DamagedStoreError, match="validation-00000.bin does not hold the ids its manifest records"):
        evaluate_split(model, tokenizer, store, "validation")
    with pytest.raises(DamagedStoreError, match="validation-00000.bin does not hold the ids"):  # nor a part of it
        evaluate_split(model, tokenizer, store, "validation", max_batches=1)
