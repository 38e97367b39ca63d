"""tf_lm.bert.finetune: config checks, metrics, and a tiny end-to-end fine-tune whose best model is saved."""

import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import script_environment

from experiments import predict_bert
from experiments.benchmarks.common import SHARED_DATA
from tf_lm.bert import data, finetune, weights
from tf_lm.bert.config import BACKENDS, FinetuneConfig
from tf_lm.bert.tokenizer import WordPieceTokenizer
from tf_lm.distribute import resolve_strategy
from tf_lm.fileio import EXPORT_MARKER

SST2 = SHARED_DATA / "sst2"


@pytest.mark.parametrize("kwargs, match", [
    ({"max_length": 1}, "Received: `max_length=1`"),
    ({"batch_size": 0}, "Received: `batch_size=0`"),
    ({"max_steps": 0}, "Received: `max_steps=0`"),
    ({"warmup_fraction": 1.0}, "Received: `warmup_fraction=1.0`"),
    ({"learning_rate": -1.0}, "Received: `learning_rate=-1.0`"),
    ({"learning_rate": math.nan}, "Received: `learning_rate=nan`"),  # NaN fails every comparison: each must refuse it
    ({"learning_rate": math.inf}, "Received: `learning_rate=inf`"),
    ({"head_lr_multiplier": math.nan}, "Received: `head_lr_multiplier=nan`"),
    ({"weight_decay": -0.01}, "Received: `weight_decay=-0.01`"),
    ({"weight_decay": math.nan}, "Received: `weight_decay=nan`"),
    ({"warmup_fraction": math.nan}, "Received: `warmup_fraction=nan`"),
    ({"num_buckets": 65, "max_length": 64}, "Received: `num_buckets=65`, `max_length=64`"),
    ({"precision": "float16"}, "Unknown `precision='float16'` for fine-tuning"),
    ({"head_lr_multiplier": 0.0}, "Received: `head_lr_multiplier=0.0`"),
    ({"backend": "torch"}, "Unknown `backend='torch'`"),
    ({"backend": "hf", "packing": True}, "`packing` needs `backend=.keras.`"),
    ({"packing": True, "jit_compile": True}, "`packing` cannot be XLA-compiled"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FinetuneConfig(**kwargs)


def test_bucket_widths():
    assert FinetuneConfig(max_length=64, num_buckets=4).bucket_widths == (16, 32, 48, 64)
    assert FinetuneConfig(max_length=10, num_buckets=3).bucket_widths == (4, 7, 10)
    assert FinetuneConfig(num_buckets=0).bucket_widths is None
    # Packing (the keras backend's default) trains on random batches; evaluation keeps the buckets.
    assert FinetuneConfig(max_length=64, num_buckets=4).train_bucket_widths is None
    assert FinetuneConfig(max_length=64, num_buckets=4, packing=False).train_bucket_widths == (16, 32, 48, 64)
    assert FinetuneConfig(max_length=64, num_buckets=4, backend="hf").train_bucket_widths == (16, 32, 48, 64)
    assert not FinetuneConfig(jit_compile=True).packs


def test_classification_metrics():
    labels, predictions = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    # Class 1: tp=2, fp=1, fn=1 -> f1 = 4 / 6.
    assert finetune.classification_metrics(labels, predictions, 2) == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    labels, predictions = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])
    # Macro over classes: f1 = (1 + 0 + 0.8) / 3.
    assert finetune.classification_metrics(labels, predictions, 3) == pytest.approx({"accuracy": 0.75, "f1": 0.6})


def short_sst2(path, split, n, max_words=8):
    """The first `n` SST-2 rows of at most `max_words` words, written to `path` as TSV."""
    rows = [line for line in (SST2 / split).read_text().splitlines()[1:] if len(line.split()) <= max_words + 1][:n]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return data.read_table(str(path))


def minilm_tokenizer():
    return WordPieceTokenizer(weights.resolve_local("minilm"))


def tiny_checkpoint(directory):
    """A random BERT one block 8 wide, with MiniLM's vocabulary and tokenizer: a fine-tune of it takes seconds."""
    from tf_lm.bert.config import BertConfig
    from tf_lm.bert.model import BertClassifier

    config = BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)
    weights.export(BertClassifier(config), weights.resolve_local("minilm"), str(directory))
    return str(directory)


def interrupt_at_step(monkeypatch, signum, step):
    """Makes `ClassifierTrainer.train` deliver `signum` to this process during the `step`-th step it runs."""
    original, steps = finetune.ClassifierTrainer.train, []

    def interrupted(self, dataset, steps_to_run, stop=None):
        def stop_after_signal():
            steps.append(1)
            if len(steps) == step:
                os.kill(os.getpid(), signum)
            return stop()
        return original(self, dataset, steps_to_run, stop_after_signal)

    monkeypatch.setattr(finetune.ClassifierTrainer, "train", interrupted)


@pytest.mark.parametrize("backend", ["keras", pytest.param("hf", marks=pytest.mark.slow)])
def test_finetune_saves_the_best_model_and_history(tmp_path, backend):
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 24)
    dev = short_sst2(tmp_path / "dev.tsv", "dev.tsv", 12)
    config = FinetuneConfig(max_length=16, batch_size=8, learning_rate=1e-4, max_steps=5, num_buckets=2,
                                     backend=backend)
    history = finetune.finetune("minilm", train, dev, config, str(tmp_path / "run"), resolve_strategy("cpu"))

    token_ids = data.encode(minilm_tokenizer(), train.texts, 16)
    steps_per_epoch = data.count_batches(token_ids, 8, config.train_bucket_widths)
    assert [record["step"] for record in history] == [steps_per_epoch, 5]
    assert history[0]["train_examples"] == 24, "one epoch must see every training example once"
    assert all(np.isfinite(record["train_loss"]) and 0 <= record["eval_accuracy"] <= 1 for record in history)
    assert json.loads((tmp_path / "run" / finetune.HISTORY_FILE).read_text()) == history

    best_dir = tmp_path / "run" / finetune.BEST_DIR
    assert {"config.json", "model.safetensors", "vocab.txt", "metrics.json"} <= set(os.listdir(best_dir))
    assert (finetune.KERAS_FILE in os.listdir(best_dir)) == (backend == "keras")
    best = json.loads((best_dir / "metrics.json").read_text())
    assert best["eval_accuracy"] == max(record["eval_accuracy"] for record in history)
    model = finetune.load_for_prediction(str(best_dir))
    predictions, probabilities = finetune.classify(model, WordPieceTokenizer(str(best_dir)), dev.texts, 16)
    assert np.mean(predictions == dev.labels) == pytest.approx(best["eval_accuracy"])
    # Padding to the batch's longest text changes no text's probability: each alone gives the same.
    tokenizer = WordPieceTokenizer(str(best_dir))
    alone = [finetune.classify(model, tokenizer, [text], 16)[1][0] for text in dev.texts[:4]]
    np.testing.assert_allclose(probabilities[:4], alone, atol=1e-5)
    with pytest.raises(ValueError, match="at least one text"):
        finetune.classify(model, WordPieceTokenizer(str(best_dir)), [], 16)


def test_a_run_on_a_tensorflow_filesystem_saves_resumes_its_record_and_predicts(tmp_path):
    """An `output_dir` on a TensorFlow filesystem (ram:// here, gs:// for a user) holds what a local one does; a
    rerun reads its best model's record there and keeps it, and the model predicts from there."""
    import tensorflow as tf

    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 8)
    config = FinetuneConfig(max_length=16, batch_size=8, max_steps=2, num_buckets=1)
    output_dir = f"ram://{tmp_path.name}/run"
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint")
    history = finetune.finetune(checkpoint, train, train, config, output_dir, resolve_strategy("cpu"))
    assert sorted(tf.io.gfile.listdir(output_dir)) == [finetune.BEST_DIR, finetune.HISTORY_FILE]
    best = f"{output_dir}/{finetune.BEST_DIR}"
    assert {finetune.KERAS_FILE, "model.safetensors", "vocab.txt", "metrics.json"} <= set(tf.io.gfile.listdir(best))
    recorded = finetune.best_on_disk(output_dir)
    assert recorded == max(history, key=lambda record: record["eval_accuracy"])
    finetune.finetune(checkpoint, train, train, dataclasses.replace(config, max_steps=1), output_dir,
                      resolve_strategy("cpu"))
    assert finetune.best_on_disk(output_dir) == recorded  # the rerun's one step did not beat it
    model = finetune.load_for_prediction(best)
    max_length = finetune.fine_tuned_max_length(best)
    predictions, _ = finetune.classify(model, WordPieceTokenizer(best), train.texts, max_length)
    assert np.mean(predictions == train.labels) == pytest.approx(recorded["eval_accuracy"])
    printed = io.StringIO()
    predict_bert.run(best, train.texts[:2], out=printed)  # the script's own check finds the directory there too
    assert [line.split("\t")[2] for line in printed.getvalue().splitlines()] == train.texts[:2]


def test_an_hf_checkpoint_on_a_tensorflow_filesystem_is_refused_for_prediction_in_one_line(tmp_path):
    best = tiny_checkpoint(f"ram://{tmp_path.name}/best")  # safetensors and config, no model.keras
    with pytest.raises(ValueError, match=r"holds a Hugging Face checkpoint without model.keras \(the hf backend's "
                                         r"output\), which is read from local directories only; copy it"):
        finetune.load_for_prediction(best)


@pytest.mark.slow  # 15 s
def test_rerun_keeps_a_better_model_already_on_disk(tmp_path):
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 8)
    best_dir = tmp_path / "run" / finetune.BEST_DIR
    best_dir.mkdir(parents=True)
    (best_dir / "config.json").write_text("{}")
    (best_dir / finetune.METRICS_FILE).write_text(json.dumps({"eval_accuracy": 1.01}))
    (best_dir / EXPORT_MARKER).write_text("{}")
    config = FinetuneConfig(max_length=16, batch_size=8, max_steps=1, num_buckets=1)
    history = finetune.finetune("minilm", train, train, config, str(tmp_path / "run"), resolve_strategy("cpu"))
    assert len(history) == 1
    assert sorted(os.listdir(best_dir)) == sorted(["config.json", finetune.METRICS_FILE, EXPORT_MARKER])


def test_a_foreign_best_dir_is_refused_before_training(tmp_path, monkeypatch):
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 8)
    best_dir = tmp_path / "run" / finetune.BEST_DIR
    best_dir.mkdir(parents=True)
    (best_dir / "precious.txt").write_text("mine")
    monkeypatch.setattr(finetune, "load_classifier", lambda *args: pytest.fail("loaded a model before refusing"))
    config = FinetuneConfig(max_length=16, batch_size=8, max_steps=1, num_buckets=1)
    with pytest.raises(ValueError, match="not one of ours and was left untouched"):
        finetune.finetune("minilm", train, train, config, str(tmp_path / "run"), resolve_strategy("cpu"))
    assert os.listdir(best_dir) == ["precious.txt"]


@pytest.mark.parametrize("text, match", [
    ('{"eval_accuracy": 0.5', r"is damaged: it is not valid JSON \(Expecting ',' delimiter"),
    ("[]", r"is damaged: it holds (an array|null), not an object"),
    ('{"eval_accuracy": "0.5"}', "is damaged: it records eval_accuracy '0.5', not a number; restore it, or remove it "
                                 "to let this run replace best/."),
    ("{}", "is damaged: it records no eval_accuracy"),
])
def test_a_damaged_best_metrics_json_is_refused_before_training(tmp_path, monkeypatch, text, match):
    """It was read after the model was loaded and the run's checkpoints/ begun (valid JSON of another kind, or a
    string accuracy, failed with a traceback, the latter only after training): now with the output dir's checks."""
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 8)
    run = tmp_path / "run"
    best_dir = run / finetune.BEST_DIR
    best_dir.mkdir(parents=True)
    (best_dir / EXPORT_MARKER).write_text("{}")
    (best_dir / finetune.METRICS_FILE).write_text(text)
    monkeypatch.setattr(finetune, "load_classifier", lambda *args: pytest.fail("loaded a model before refusing"))
    config = FinetuneConfig(max_length=16, batch_size=8, max_steps=1, num_buckets=1)
    with pytest.raises(ValueError, match=re.escape(str(best_dir / finetune.METRICS_FILE)) + " " + match):
        finetune.finetune("minilm", train, train, config, str(run), resolve_strategy("cpu"))
    assert os.listdir(run) == [finetune.BEST_DIR]
    assert (best_dir / finetune.METRICS_FILE).read_text() == text


@pytest.mark.parametrize("history", [{}, [1], [{"epoch": 1, "step": "1", "eval_accuracy": 0.5, "eval_f1": 0.5}],
                                     [{"epoch": 1, "step": 1, "eval_f1": 0.5}]])
def test_a_damaged_history_json_is_named_not_overwritten(tmp_path, history):
    """A resume reads the evaluations already made; a list of other things failed in a subscript (TypeError), a
    record without its accuracy later, in the run's report (KeyError). A new run read none and overwrote it."""
    path = tmp_path / finetune.HISTORY_FILE
    path.write_text(json.dumps(history))
    with pytest.raises(ValueError, match=re.escape(f"{path} is damaged: it is not a list of evaluation records")):
        finetune._read_history(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(f"{path} is damaged")):  # before the model loads
        finetune.finetune("no-such-model", None, None, FinetuneConfig(), str(tmp_path),
                          resolve_strategy("cpu"))
    assert json.loads(path.read_text()) == history
    record = {"epoch": 1, "step": 1, "eval_accuracy": 0.5, "eval_f1": 0.25}
    path.write_text(json.dumps([record, {**record, "epoch": 2, "step": 2}]))
    assert finetune._read_history(str(tmp_path)) == [record, {**record, "epoch": 2, "step": 2}]


@pytest.mark.parametrize("max_length", ["abc", "16", 1, 16.0, True, [16]])
def test_a_damaged_fine_tuned_max_length_is_named(tmp_path, max_length):
    """predict_bert compared it with an int (TypeError for a string, printed as a traceback)."""
    path = tmp_path / finetune.FINETUNE_CONFIG_FILE
    path.write_text(json.dumps({"max_length": max_length}))
    with pytest.raises(ValueError, match=re.escape(f"{path} is damaged: its max_length is {max_length!r}, not an "
                                                   "integer >= 2; restore it, or pass `max_length` explicitly.")):
        finetune.fine_tuned_max_length(str(tmp_path))
    path.write_text(json.dumps({"max_length": None}))
    assert finetune.fine_tuned_max_length(str(tmp_path)) is None
    path.write_text("[]")
    with pytest.raises(ValueError, match=re.escape(f"{path} is damaged: it holds an array, not an object")):
        finetune.fine_tuned_max_length(str(tmp_path))


def short_run(tmp_path, **config):
    """`run(name)`: fine-tunes a tiny checkpoint on 16 SST-2 sentences (two batches of 8, trained and evaluated on)
    into `tmp_path/name`, with `config` (epochs, buckets) on top of the shared settings."""
    model = tiny_checkpoint(tmp_path / "model")
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 16)
    settings = FinetuneConfig(max_length=16, batch_size=8, learning_rate=1e-3, **config)

    def run(name):
        return finetune.finetune(model, train, train, settings, str(tmp_path / name), resolve_strategy("cpu"))

    return run


# The last step of the first epoch, and of the run (12 s; in make test-all).
@pytest.mark.parametrize("stop_step", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_a_signal_in_the_last_step_of_an_epoch_evaluates_it_before_stopping(tmp_path, monkeypatch, stop_step):
    """The checkpoint resumes after the epoch, so its evaluation (history, best/) must come first: else the
    resumed run never evaluates it (and, stopped in the run's last step, evaluates nothing at all)."""
    import signal

    run = short_run(tmp_path, epochs=2, num_buckets=2)
    straight = run("straight")
    assert [record["step"] for record in straight] == [2, 4]  # two batches an epoch
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, signal.SIGTERM, stop_step)
        with pytest.raises(finetune.TrainingInterrupted, match=f"at step {stop_step} of 4"):
            run("resumed")
    saved = json.loads((tmp_path / "resumed" / finetune.HISTORY_FILE).read_text())
    assert saved[-1]["step"] == stop_step and (tmp_path / "resumed" / finetune.BEST_DIR).is_dir()
    resumed = run("resumed")
    assert [record["step"] for record in resumed] == [2, 4]
    for key in ("eval_loss", "eval_accuracy"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], abs=1e-6), key
    assert sorted(os.listdir(tmp_path / "resumed")) == [finetune.BEST_DIR, finetune.HISTORY_FILE]


def test_a_resumed_epochs_record_covers_its_steps_before_the_interruption(tmp_path, monkeypatch):
    """The checkpoint keeps the interrupted epoch's summed loss and time, so the record a resume completes is the
    uninterrupted run's: the loss of all its steps (added in the same order), every example seen once."""
    import signal

    run = short_run(tmp_path, epochs=1, num_buckets=1)
    straight = run("straight")
    assert [record["step"] for record in straight] == [2]
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, signal.SIGTERM, 1)
        with pytest.raises(finetune.TrainingInterrupted, match="at step 1 of 2"):
            run("resumed")
    # A better best/ of an earlier run (hand-written: accuracy 1.01 cannot be beaten) must survive the evaluation.
    best_dir = tmp_path / "resumed" / finetune.BEST_DIR
    best_dir.mkdir()
    (best_dir / finetune.METRICS_FILE).write_text(json.dumps({"eval_accuracy": 1.01}))
    (best_dir / EXPORT_MARKER).write_text("{}")
    assert finetune.best_on_disk(str(tmp_path / "resumed")) == {"eval_accuracy": 1.01}
    resumed = run("resumed")
    assert sorted(os.listdir(best_dir)) == sorted([finetune.METRICS_FILE, EXPORT_MARKER])
    assert resumed[0]["train_examples"] == straight[0]["train_examples"] == 16
    assert resumed[0]["train_loss"] == pytest.approx(straight[0]["train_loss"], abs=1e-7)
    assert resumed[0]["train_examples_per_s"] == pytest.approx(16 / resumed[0]["train_seconds"])


def test_a_checkpoint_without_the_epochs_totals_is_refused_in_one_sentence(tmp_path, monkeypatch):
    """An interrupted run of a version that did not checkpoint the epoch's totals cannot resume exactly: refused."""
    import signal

    model = tiny_checkpoint(tmp_path / "model")
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 16)
    config = FinetuneConfig(max_length=16, batch_size=8, epochs=1, num_buckets=1)

    def run():
        return finetune.finetune(model, train, train, config, str(tmp_path / "run"), resolve_strategy("cpu"))

    with monkeypatch.context() as patch:
        interrupt_at_step(patch, signal.SIGTERM, 1)
        checkpoints = finetune.Checkpoints
        patch.setattr(finetune, "Checkpoints", lambda directory, model, optimizers, **kwargs: checkpoints(
            directory, model, [o for o in optimizers if not isinstance(o, finetune._EpochProgress)], **kwargs))
        with pytest.raises(finetune.TrainingInterrupted):
            run()
    with pytest.raises(ValueError, match="checkpoints was written by another version of tf_lm .*; move it aside"):
        run()


def test_a_rerun_on_other_data_or_classes_is_refused_before_training(tmp_path, monkeypatch):
    """An interrupted run's identity holds its data by content and its classes: a rerun on other examples of the
    same count would resume onto them, one with other class names under those, and one with another class count
    would fail restoring the head, naming no setting. Each is refused listing what changed; the same rerun resumes."""
    import signal

    model = tiny_checkpoint(tmp_path / "model")
    train = dataclasses.replace(short_sst2(tmp_path / "train.tsv", "train.tsv", 16), label_names=["neg", "pos"])
    config = FinetuneConfig(max_length=16, batch_size=8, epochs=1, num_buckets=1)

    class Trained(Exception):
        pass

    def run(train_data=train, eval_data=train, num_labels=None):
        return finetune.finetune(model, train_data, eval_data, config, str(tmp_path / "run"), resolve_strategy("cpu"),
                                 num_labels=num_labels)

    def interrupted_without_a_step(self, dataset, steps, stop=None):  # no step traced: the identity is what counts
        self.steps_done, self.losses = 1, [0.5]
        os.kill(os.getpid(), signal.SIGTERM)
        stop()
        return 0.5

    def train_reached(*args, **kwargs):
        raise Trained

    with monkeypatch.context() as patch:
        patch.setattr(finetune.ClassifierTrainer, "train", interrupted_without_a_step)
        with pytest.raises(finetune.TrainingInterrupted, match="at step 1 of 2"):
            run()
    monkeypatch.setattr(finetune.ClassifierTrainer, "train", train_reached)
    flipped = dataclasses.replace(train, labels=1 - train.labels)
    for kwargs, listed in [
        ({"train_data": dataclasses.replace(train, texts=train.texts[::-1])}, r"train_digest: '\w+' -> '\w+'"),
        ({"eval_data": flipped}, r"eval_digest: '\w+' -> '\w+'"),
        ({"train_data": dataclasses.replace(train, label_names=None), "num_labels": 3},
         r"num_labels: 2 -> 3, label_names: \['neg', 'pos'\] -> None"),
        ({"train_data": dataclasses.replace(train, label_names=["bad", "good"])},
         r"label_names: \['neg', 'pos'\] -> \['bad', 'good'\]"),
        ({"train_data": dataclasses.replace(train, text_key="0")}, "text_key: 'sentence' -> '0'"),
    ]:
        with pytest.raises(ValueError, match=rf"an interrupted run with other settings \({listed}\); rerun it"):
            run(**kwargs)
    with pytest.raises(Trained):  # the same settings (read back from JSON) pass, and restore the checkpoint
        run(dataclasses.replace(train, texts=list(train.texts), label_names=("neg", "pos")))


def test_weights_gone_nan_in_the_last_update_are_never_saved_as_best(tmp_path, monkeypatch):
    """The loss of each step is finite, but the update after the last one leaves NaN weights: the evaluation
    finds them, and the run stops as diverged instead of saving a NaN model (whose accuracy beats "none")."""
    model = tiny_checkpoint(tmp_path / "model")
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 16)
    loaded, original_load, original_train = [], finetune.load_classifier, finetune.ClassifierTrainer.train
    monkeypatch.setattr(finetune, "load_classifier", lambda *args: loaded.append(original_load(*args)) or loaded[0])

    def train_then_poison(self, dataset, steps, stop=None):
        loss = original_train(self, dataset, steps, stop)
        loaded[0].model.classifier.bias.assign([math.nan, math.nan])
        return loss

    monkeypatch.setattr(finetune.ClassifierTrainer, "train", train_then_poison)
    config = FinetuneConfig(max_length=16, batch_size=8, max_steps=2, num_buckets=2)
    with pytest.raises(finetune.TrainingDiverged, match="eval loss became nan after step 2; stopped without saving"):
        finetune.finetune(model, train, train, config, str(tmp_path / "run"), resolve_strategy("cpu"))
    assert not (tmp_path / "run" / finetune.BEST_DIR).exists()
    assert not (tmp_path / "run" / finetune.HISTORY_FILE).exists()


def test_label_outside_num_labels_is_rejected(tmp_path):
    (tmp_path / "t.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\nodd\t2\n")
    train = data.read_table(str(tmp_path / "t.tsv"))
    dev = data.read_table(str(SST2 / "dev.tsv"), max_examples=4)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="t.tsv: example 2 has label 2, outside the 2 classes"):
            finetune.finetune("minilm", train, dev, FinetuneConfig(backend=backend),
                              str(tmp_path / "out"), resolve_strategy("cpu"), num_labels=2)


def test_a_foreign_output_dir_is_refused_untouched(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "precious.txt").write_text("mine")
    train = data.read_table(str(SST2 / "dev.tsv"), max_examples=4)
    with pytest.raises(ValueError, match="not one of ours and was left untouched"):
        finetune.finetune("minilm", train, train, FinetuneConfig(max_steps=1), str(tmp_path),
                          resolve_strategy("cpu"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "precious.txt"]


def test_max_length_over_the_model_limit_is_rejected(tmp_path):
    dev = data.read_table(str(SST2 / "dev.tsv"), max_examples=4)
    with pytest.raises(ValueError, match="max_length 1024 exceeds .*512"):
        finetune.finetune("minilm", dev, dev, FinetuneConfig(max_length=1024), str(tmp_path),
                          resolve_strategy("cpu"))


def dev_batches(n):
    """The first `n` SST-2 dev sentences in batches of 4, cut and padded to 16 tokens."""
    dev = data.read_table(str(SST2 / "dev.tsv"), max_examples=n)
    token_ids = data.encode(minilm_tokenizer(), dev.texts, 16)
    return data.make_dataset(token_ids, dev.labels, batch_size=4, bucket_widths=(16,))


@pytest.mark.slow  # 37 s
def test_same_seed_repeats_a_run(tmp_path):
    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 16)
    config = FinetuneConfig(max_length=16, batch_size=8, learning_rate=1e-4, max_steps=2, num_buckets=2)
    runs = [finetune.finetune("minilm", train, train, config, str(tmp_path / f"run{i}"), resolve_strategy("cpu"))
            for i in range(2)]
    assert runs[0][-1]["train_loss"] == runs[1][-1]["train_loss"]
    assert runs[0][-1]["eval_loss"] == runs[1][-1]["eval_loss"]


@pytest.mark.slow  # 18 s
def test_head_trains_at_its_multiple_of_the_learning_rate():
    strategy = resolve_strategy("cpu")
    dataset = dev_batches(4)
    with strategy.scope():
        classifier = finetune.load_keras_classifier("minilm", 2, None, "float32", seed=0)
    config = FinetuneConfig(learning_rate=1e-4, head_lr_multiplier=10, warmup_fraction=0, weight_decay=0)
    trainer = finetune.make_trainer(classifier, config, total_steps=10, strategy=strategy)
    model = classifier.model
    head = {id(v) for v in model.head_variables()}
    before = [v.numpy() for v in model.trainable_variables]
    trainer.train(dataset, steps=1)
    # Adam's first step moves each weight by the learning rate times g / (|g| + eps): at most the rate.
    moves = {True: [], False: []}
    for variable, old in zip(model.trainable_variables, before):
        moves[id(variable) in head].append(np.abs(variable.numpy() - old).max())
    assert max(moves[True]) == pytest.approx(1e-3, rel=1e-2)
    assert max(moves[False]) == pytest.approx(1e-4, rel=1e-2)


def test_nan_loss_stops_training():
    strategy = resolve_strategy("cpu")
    with strategy.scope():
        classifier = finetune.load_keras_classifier("minilm", 2, None, "float32", seed=0)
    config = FinetuneConfig(learning_rate=1e-4)
    trainer = finetune.make_trainer(classifier, config, total_steps=4, strategy=strategy)
    poisoned = dev_batches(4).map(lambda features, labels, weights: (features, labels, weights * np.nan))
    with pytest.raises(finetune.TrainingDiverged, match="loss became nan at step 1"):
        trainer.train(poisoned, steps=1)


@pytest.mark.slow  # 12 s
def test_both_backends_train_alike_without_dropout(tmp_path):
    """The recipe is the same, not only the model: optimizer, schedule and warm-up, weight decay and what it skips,
    the head's multiple, loss and batches. Without dropout (the only random draws left) and in float32, 8 steps
    of each backend from one checkpoint (a random config saved by transformers, its head included) end equal."""
    import transformers

    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    transformers.set_seed(0)
    checkpoint = transformers.TFBertForSequenceClassification(config)
    checkpoint(checkpoint.dummy_inputs)
    checkpoint.save_pretrained(str(tmp_path), safe_serialization=True)
    for name in ("vocab.txt", "tokenizer_config.json"):  # loaded, not used: the batches are made of ids
        shutil.copy(os.path.join(weights.resolve_local("minilm"), name), tmp_path)
    rng = np.random.default_rng(0)
    token_ids = [rng.integers(1, 40, size=rng.integers(3, 12)).astype("int32") for _ in range(24)]
    labels = rng.integers(0, 2, size=24)
    tune = FinetuneConfig(max_length=12, batch_size=4, learning_rate=1e-3, head_lr_multiplier=10,
                                   warmup_fraction=0.25, weight_decay=0.1)
    strategy = resolve_strategy("cpu")
    losses, final = {}, {}
    for backend, load in (("keras", finetune.load_keras_classifier), ("hf", finetune.load_hf_classifier)):
        classifier = load(str(tmp_path), 2, None, "float32", seed=0)
        trainer = finetune.make_trainer(classifier, tune, total_steps=8, strategy=strategy)
        batches = iter(data.make_dataset(token_ids, labels, 4, shuffle=True, bucket_widths=(6, 12)).repeat())
        losses[backend] = [float(trainer.train_step(batches)[0]) for _ in range(8)]
        final[backend] = (classifier.forward(next(batches)[0], training=False).numpy(),
                          sum(float(np.abs(v.numpy()).sum()) for v in classifier.model.trainable_variables))
    np.testing.assert_allclose(losses["keras"], losses["hf"], atol=1e-5)
    np.testing.assert_allclose(final["keras"][0], final["hf"][0], atol=1e-5)  # logits after training
    # All weights' total size (keras fuses q, k and v into one kernel, so the variables do not pair up).
    assert final["keras"][1] == pytest.approx(final["hf"][1], rel=1e-6)


@pytest.mark.slow
def test_jit_compiled_trainer_matches_the_plain_one():
    strategy = resolve_strategy("cpu")
    dataset = dev_batches(6)
    with strategy.scope():
        classifier = finetune.load_keras_classifier("minilm", 2, None, "float32", seed=0)
    config = FinetuneConfig(max_steps=4, warmup_fraction=0)
    plain = finetune.make_trainer(classifier, config, 4, strategy)
    compiled = finetune.make_trainer(classifier, dataclasses.replace(config, jit_compile=True), 4, strategy)
    np.testing.assert_allclose(compiled.predict(dataset)[0], plain.predict(dataset)[0], atol=1e-4)
    assert np.isfinite(compiled.train(dataset, steps=2))


MIRRORED_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tf_lm.bert import data, finetune
from tf_lm.bert.config import BertConfig, FinetuneConfig
from tf_lm.bert.model import BertClassifier
from tf_lm.distribute import resolve_strategy
from tf_lm.fileio import EXPORT_MARKER

# No dropout: two replicas would draw other masks than one device does.
config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
rng = np.random.default_rng(0)
token_ids = [rng.integers(1, 40, size=rng.integers(3, 12)).astype("int32") for _ in range(20)]
dataset = data.make_dataset(token_ids, rng.integers(0, 2, size=20), batch_size=8, bucket_widths=(6, 12)).repeat()
tune = FinetuneConfig(max_length=12, batch_size=8, learning_rate=1e-3, head_lr_multiplier=5)
for packed in (False, True):  # each replica packs its own share of the batch
    final = []
    for name in ("cpu", "mirrored"):
        strategy = resolve_strategy(name)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = BertClassifier(config)
        classifier = finetune.keras_classifier(model, None, packed)
        trainer = finetune.make_trainer(classifier, tune, total_steps=4, strategy=strategy)
        assert strategy.num_replicas_in_sync == (1 if name == "cpu" else 2)
        trainer.train(dataset, steps=4)
        final.append([v.numpy() for v in model.trainable_variables])
    for one, two in zip(*final):
        np.testing.assert_allclose(two, one, atol=2e-5)
print("ok")
"""


@pytest.mark.slow  # 50 s; the language model's mirrored test covers the step both share (make_train_step)
def test_mirrored_fine_tuning_on_two_logical_cpus_equals_one_device():
    result = run_python(MIRRORED_SCRIPT)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


CLI_MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_lm.bert import data, finetune
from tf_lm.bert.config import FinetuneConfig
from tf_lm.distribute import resolve_strategy
from tf_lm.fileio import EXPORT_MARKER
strategy = resolve_strategy("mirrored")
dev = data.read_table(sys.argv[1], max_examples=10)
config = FinetuneConfig(max_length=16, batch_size=4, epochs=1, num_buckets=2, backend=sys.argv[3])
history = finetune.finetune("minilm", dev, dev, config, sys.argv[2], strategy)
assert history[-1]["train_examples"] == 10 and 0 <= history[-1]["eval_accuracy"] <= 1, history
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_finetune_under_a_two_replica_mirrored_strategy(tmp_path, backend):
    result = run_python(CLI_MIRRORED_SCRIPT, str(SST2 / "dev.tsv"), str(tmp_path), backend)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def run_python(code, *args):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1], env=script_environment())


@pytest.mark.slow  # three fine-tunes, ~1 minute a backend
@pytest.mark.parametrize("backend", BACKENDS)  # hf: a tf_keras model and legacy optimizers' slots
def test_ctrl_c_checkpoints_and_the_rerun_resumes_to_the_same_result(tmp_path, monkeypatch, backend):
    import signal

    train = short_sst2(tmp_path / "train.tsv", "train.tsv", 24)
    config = FinetuneConfig(max_length=16, batch_size=8, learning_rate=1e-4, max_steps=5, num_buckets=2,
                                     backend=backend)

    def run(name):
        return finetune.finetune("minilm", train, train, config, str(tmp_path / name), resolve_strategy("cpu"))

    straight = run("straight")
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, signal.SIGINT, 2)
        with pytest.raises(finetune.TrainingInterrupted, match="at step 2 of 5") as caught:
            run("resumed")
    assert caught.value.signum == signal.SIGINT
    assert os.listdir(tmp_path / "resumed" / finetune.CHECKPOINT_DIR)
    other = dataclasses.replace(config, learning_rate=2e-4)
    with pytest.raises(ValueError, match=r"other settings \(learning_rate: 0.0001 -> 0.0002\)"):
        finetune.finetune("minilm", train, train, other, str(tmp_path / "resumed"), resolve_strategy("cpu"))
    resumed = run("resumed")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    # keras resumes exactly (its dropout seeds are checkpointed variables); transformers' dropout draws from
    # stateful TF ops that no checkpoint holds, so a resumed hf run draws other masks than the straight one.
    tolerance = 1e-6 if backend == "keras" else 1e-2
    for key in ("eval_loss", "eval_accuracy"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], abs=tolerance), key
    assert not (tmp_path / "resumed" / finetune.CHECKPOINT_DIR).exists(), "a complete run keeps no checkpoints"


def test_a_damaged_model_keras_is_named_as_damaged(tmp_path):
    (tmp_path / finetune.KERAS_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"model.keras: the file is damaged \(it is not a \.keras zip archive: cut "
                                         r"short, or another kind of file\); fine-tune again"):  # not "File not found"
        finetune.load_for_prediction(str(tmp_path))


def test_prediction_refuses_a_checkpoint_without_its_classifier(tmp_path):
    """A bare encoder (MiniLM's own directory, say) has no classifier: predicting with it would print the guesses of
    an unseeded random head, other ones each run. It is refused, as is a head of other classes than its config's;
    fine-tuning from either still starts a new head."""
    from safetensors.numpy import load_file, save_file

    from experiments import predict_bert
    from tf_lm.bert.model import BertClassifier

    model_dir = tiny_checkpoint(tmp_path / "bare")
    path = os.path.join(model_dir, weights.SAFETENSORS_FILE)
    state = load_file(path)
    save_file({k: v for k, v in state.items() if not k.startswith("classifier.")}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"bare' is not a fine-tuned classifier: its checkpoint has no "
                                         r"'classifier.weight'; pass the best/ directory of experiments.finetune_bert"):
        predict_bert.run(model_dir, ["a gorgeous film"], max_length=16)
    three = {"classifier.weight": np.ones((3, 8), np.float32), "classifier.bias": np.ones(3, np.float32)}
    save_file({**state, **three}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"has 'classifier.weight' of shape \(8, 3\) where its config.json's 2 "
                                         r"classes need \(8, 2\)"):
        finetune.load_for_prediction(model_dir)
    assert BertClassifier.from_pretrained(model_dir).config.num_labels == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_safetensors_or_tokenizer_json_is_named_in_one_sentence(tmp_path, backend):
    """`safetensors` and `tokenizers` raise their own types (not ValueError or OSError) for a damaged file, which the
    scripts would print as a traceback: each becomes a ValueError naming the file."""
    from experiments import predict_bert

    model_dir = tiny_checkpoint(tmp_path / "model")
    config = FinetuneConfig(backend=backend)
    for name in (weights.SAFETENSORS_FILE, "tokenizer.json"):
        path = tmp_path / "model" / name
        intact = path.read_bytes()
        path.write_bytes(intact[:len(intact) // 2])
        damaged = rf"{path} is damaged( or incomplete)? \(.+\); replace it with an intact copy\.$"
        with pytest.raises(ValueError, match=damaged):
            finetune.load_classifier(model_dir, 2, None, config)
        if backend == "keras":  # predict_bert reads either backend's best/ through the keras code
            with pytest.raises(ValueError, match=rf"{path} is damaged"):
                predict_bert.run(model_dir, ["a gorgeous film"], max_length=16)
        path.write_bytes(intact)
