"""experiments.finetune_bert and experiments.predict_bert end to end: a tiny run, its predictions, bad inputs."""

import io
import json
import os
import re

import pytest
from conftest import failure_line, run_module

from experiments.benchmarks.common import SHARED_DATA

SST2 = SHARED_DATA / "sst2"


def assert_one_line_error(result, match):
    last = failure_line(result)
    assert last.startswith("error:") and match in last, last


def finetune_error(*argv) -> str:
    """The line finetune_bert ends with for bad input `argv`: its `run` on a FlagValues of its own flags, in this
    process (TensorFlow has loaded here already), with the error in flag terms as `one_line_errors` prints it.
    The scripts' own one-line exits are tested by the cases that fail before TensorFlow loads."""
    from absl import flags

    from experiments.finetune_bert import define_finetune_flags, run
    from experiments.flags import in_flag_terms

    script_flags = flags.FlagValues()
    define_finetune_flags(script_flags)
    script_flags(["finetune_bert", *argv])
    with pytest.raises((ValueError, OSError)) as error:
        run(script_flags)
    return f"error: {in_flag_terms(str(error.value), script_flags)}"


def predict_error(model_dir) -> str:
    """The line predict_bert ends with for `model_dir` (its `run`, in this process, the error in its flag terms)."""
    from absl import flags

    from experiments.flags import in_flag_terms
    from experiments.predict_bert import define_predict_flags, run

    script_flags = flags.FlagValues()
    define_predict_flags(script_flags)
    with pytest.raises((ValueError, OSError)) as error:
        run(str(model_dir), ["a gorgeous film"], out=io.StringIO())
    return f"error: {in_flag_terms(str(error.value), script_flags)}"


def write_tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return str(path)


@pytest.mark.parametrize("backend", ["keras", "hf"])
def test_predict_prints_label_and_probability(tmp_path, backend):
    """`predict_bert` reads the output of either backend (model.keras + HF export, or HF's save_pretrained)."""
    from experiments import predict_bert
    from tf_lm.bert import finetune

    model_dir = str(tmp_path / "model")
    load = finetune.load_keras_classifier if backend == "keras" else finetune.load_hf_classifier
    load("minilm", 2, ["negative", "positive"], "float32", seed=0).save(model_dir, {})
    out = io.StringIO()
    predict_bert.run(model_dir, ["a gorgeous film", "a dull mess"], max_length=16, out=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2
    for line, sentence in zip(lines, ["a gorgeous film", "a dull mess"]):
        label, probability, text = line.split("\t")
        assert label in ("negative", "positive") and 0.5 <= float(probability) <= 1 and text == sentence


def test_predict_cuts_sentences_at_the_fine_tuned_max_length(tmp_path):
    """Without `--max_length` a `best/` directory is read at the length in its `finetune_config.json` (a model tuned
    on 5 tokens never saw more), and a directory that records none at 128."""
    from experiments import predict_bert
    from tf_lm.bert import finetune, weights
    from tf_lm.bert.config import BertConfig
    from tf_lm.bert.model import BertClassifier
    from tf_lm.bert.tokenizer import WordPieceTokenizer

    # Large random weights: every token read moves the probabilities.
    model = BertClassifier(BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=16, max_position_embeddings=160, initializer_range=0.5))
    classifier = finetune.keras_classifier(model, WordPieceTokenizer(weights.resolve_local("minilm")))
    sentences = ["a gorgeous , witty , seductive movie that never once loses its nerve or its sense of humour ."]

    def predict(model_dir, max_length=None):
        out = io.StringIO()
        predict_bert.run(model_dir, sentences, max_length=max_length, out=out)
        return out.getvalue()

    best = str(tmp_path / "best")
    classifier.save(best, {"finetune_config.json": {"max_length": 5, "batch_size": 32}})
    assert predict(best, 5) != predict(best, 128)
    result = run_module("experiments.predict_bert", f"--model_dir={best}", *sentences)  # no --max_length
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == predict(best, 5)
    classifier.save(str(tmp_path / "unrecorded"), {})
    assert predict(str(tmp_path / "unrecorded")) == predict(str(tmp_path / "unrecorded"), 128)


def test_predict_cuts_at_a_models_fewer_positions_unless_max_length_is_passed(tmp_path):
    """A model of fewer than 128 positions in a directory without finetune_config.json was refused for a
    --max_length of 128 the user never passed; it is read at its positions, and only a --max_length passed beyond
    them is refused."""
    from experiments import predict_bert

    # Large random weights: every token read moves the probabilities.
    model_dir = save_tiny_classifier(tmp_path / "best", max_position_embeddings=32, initializer_range=0.5)
    sentences = ["a gorgeous , witty , seductive movie that never once loses its nerve or its sense of humour ." * 2]

    def predict(max_length=None):
        out = io.StringIO()
        predict_bert.run(model_dir, sentences, max_length=max_length, out=out)
        return out.getvalue()

    assert predict() == predict(32) != predict(16)
    with pytest.raises(ValueError, match=re.escape("--max_length must lie in [2, 32]. Received: --max_length=128")):
        predict(128)


@pytest.mark.slow
def test_finetune_then_predict(tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [("a gorgeous film", 1), ("a dull mess", 0)] * 4)
    result = run_module("experiments.finetune_bert", "--model=minilm", f"--train_file={train}",
                        f"--eval_file={train}", "--max_length=8", "--batch_size=4", "--max_steps=2", "--num_buckets=1",
                        "--label_names=neg,pos", f"--output_dir={tmp_path / 'run'}", "--strategy=cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best eval accuracy" in result.stdout and f"saved to {tmp_path / 'run'}/best" in result.stdout
    result = run_module("experiments.predict_bert", f"--model_dir={tmp_path / 'run' / 'best'}", "a gorgeous film",
                        "a dull mess")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, sentence in zip(lines, ["a gorgeous film", "a dull mess"]):
        label, probability, text = line.split("\t")
        assert label in ("neg", "pos") and 0.5 <= float(probability) <= 1 and text == sentence


def test_finetune_report_says_whether_best_holds_this_runs_model(tmp_path):
    """best/ is replaced only by a strictly better model, so on a tie it keeps the earlier run's; a resumed run with
    no evaluation left to make (and no history.json) has no history, and says so rather than failing."""
    from experiments.finetune_bert import report
    from tf_lm.bert import finetune

    record = {"epoch": 1, "step": 2, "train_seconds": 1.5, "eval_accuracy": 0.75, "eval_f1": 0.5}
    metrics = tmp_path / finetune.BEST_DIR / finetune.METRICS_FILE
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(record))
    assert report([record], str(tmp_path)) == (f"best eval accuracy 0.7500 (f1 0.5000) after epoch 1; saved to "
                                               f"{tmp_path}/best")
    metrics.write_text(json.dumps({**record, "train_seconds": 2.5}))  # an earlier run's model, as accurate
    assert report([record], str(tmp_path)).endswith(f"{tmp_path}/best keeps an earlier model, of eval accuracy 0.7500")
    assert report([], str(tmp_path)) == f"nothing left to train in {tmp_path}"


@pytest.mark.parametrize("backend", ["keras", "hf"])
@pytest.mark.parametrize("content, match", [
    (b"", "empty.tsv is empty"),
    (b"sentence\tlabel\nfine\t1\nodd\t--1\n", "empty.tsv:3: the label '--1'"),
    (b"sentence\tlabel\ncaf\xe9\t1\n", "empty.tsv:2: byte 0xe9 is not UTF-8"),
    (b"review\tlabel\nfine\t1\n", "has no text column 'sentence'; its columns are ['review', 'label']. "
                                    "Pass --text_key=<column name or 0-based index>."),
])
def test_finetune_bad_inputs_fail_in_one_line(tmp_path, backend, content, match):
    bad = tmp_path / "empty.tsv"
    bad.write_bytes(content)
    assert_one_line_error(run_module("experiments.finetune_bert", f"--backend={backend}", f"--train_file={bad}",
                                     f"--eval_file={bad}", f"--output_dir={tmp_path}"), match)


@pytest.mark.parametrize("backend, match", [
    ("keras", "'tf-lm-tests/no-such-model' is not 'minilm' or a local directory; the Keras backend reads local"),
    ("hf", "'tf-lm-tests/no-such-model' is not 'minilm' or a local directory, the Hugging Face hub is unreachable"),
])
def test_finetune_unknown_model_offline_fails_in_one_line(tmp_path, backend, match):
    train = write_tsv(tmp_path / "train.tsv", [("good", 1), ("bad", 0)])
    output_dir = tmp_path / "out"
    assert_one_line_error(run_module("experiments.finetune_bert", "--model=tf-lm-tests/no-such-model",
                                     f"--backend={backend}", f"--train_file={train}", f"--eval_file={train}",
                                     f"--output_dir={output_dir}", env={"HF_HUB_OFFLINE": "1"}), match)


def test_predict_without_model_dir_fails_in_one_line(tmp_path):
    result = run_module("experiments.predict_bert", f"--model_dir={tmp_path / 'absent'}", "a sentence")
    assert_one_line_error(result, "No model directory")


def test_predict_on_a_language_model_directory_says_so_in_one_line(tmp_path):
    from tf_lm import LMConfig, TransformerLM
    from tf_lm.artifacts import save_model_dir
    from tf_lm.data import CharTokenizer

    tokenizer = CharTokenizer.from_text("hello world")
    save_model_dir(str(tmp_path), TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1,
                                                           n_head=2, n_embd=8)), tokenizer)
    line = predict_error(tmp_path)
    assert "holds a TransformerLM (a language model of experiments.train_lm), not a fine-tuned" in line
    assert ".bin" not in line


def save_tiny_classifier(directory, extra_json=None, **config) -> str:
    """A random 2-class BertClassifier one block 8 wide (160 positions), with MiniLM's vocabulary, saved as
    finetune_bert saves its best/ (model.keras and the Hugging Face checkpoint); `config` overrides BertConfig's
    fields."""
    from tf_lm.bert import finetune, weights
    from tf_lm.bert.config import BertConfig
    from tf_lm.bert.model import BertClassifier
    from tf_lm.bert.tokenizer import WordPieceTokenizer

    shape = {"vocab_size": 30522, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 16, "max_position_embeddings": 160}
    model = BertClassifier(BertConfig(**{**shape, **config}))
    classifier = finetune.keras_classifier(model, WordPieceTokenizer(weights.resolve_local("minilm")))
    classifier.save(str(directory), extra_json or {})
    return str(directory)


def damaged_json_error(path) -> str:
    """The one line a script ends with for the damaged JSON file `path`: `tf_lm.fileio.read_json_object`'s error,
    which names it."""
    from tf_lm.fileio import read_json_object

    with pytest.raises(ValueError, match="is damaged") as error:
        read_json_object(str(path))
    assert str(path) in str(error.value)
    return f"error: {error.value}"


@pytest.mark.parametrize("backend, text", [
    ("keras", "[]"),  # was AttributeError: 'list' object has no attribute 'get'
    ("hf", "[]"),  # was a 46-line TypeError from transformers
    ("keras", '{"model_type": "bert",\n'),  # was `error: Expecting property name ...`, naming no file
])
def test_finetune_from_a_damaged_config_json_fails_in_one_line_naming_it(tmp_path, backend, text):
    model = save_tiny_classifier(tmp_path / "model")
    config = tmp_path / "model" / "config.json"
    config.write_text(text)
    train = write_tsv(tmp_path / "train.tsv", [("a gorgeous film", 1), ("a dull mess", 0)])
    assert finetune_error(f"--model={model}", f"--backend={backend}", f"--train_file={train}", f"--eval_file={train}",
                          f"--output_dir={tmp_path / 'run'}", "--max_length=8",
                          "--strategy=cpu") == damaged_json_error(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, text, message", [
    # best/ of the hf backend (no model.keras): config.json is read as the model's description.
    ("config.json", "[]", None),  # was AttributeError: 'list' object has no attribute 'get'
    ("config.json", '{"a": "x\ty"}', None),  # was `error: Invalid control character at: ...`, naming no file
    # Was TypeError: '<=' not supported between instances of 'int' and 'str'.
    ("finetune_config.json", '{"max_length": "abc"}', "{path} is damaged: its max_length is 'abc', not an integer >= "
                                                      "2; restore it, or pass --max_length explicitly."),
    # Was blamed on a --max_length the user never passed.
    ("finetune_config.json", '{"max_length": 600}', "{path} records max_length 600, beyond the model's 160 "
                                                    "positions, so it does not belong to this model; restore it, or "
                                                    "pass --max_length."),
])
def test_predict_with_a_damaged_model_dir_file_fails_in_one_line_naming_it(tmp_path, name, text, message):
    best = save_tiny_classifier(tmp_path / "best", {"finetune_config.json": {"max_length": 16}})
    if name == "config.json":
        (tmp_path / "best" / "model.keras").unlink()
    path = tmp_path / "best" / name
    path.write_text(text)
    assert predict_error(best) == (damaged_json_error(path) if message is None else
                                   "error: " + message.format(path=path))


@pytest.mark.parametrize("rows, flags, message", [
    # The loaders call it max_examples, which is no flag of finetune_bert.
    ([("good", 1), ("bad", 0)], ["--max_train_examples=0"],
     "--max_train_examples must be >= 1 (unset keeps every example). Received: --max_train_examples=0"),
    ([("good", 1), ("bad", 0), ("odd", 2)], ["--num_labels=2"],
     "train.tsv: example 2 has label 2, outside the 2 classes [0, 1]; fix the data or pass a larger --num_labels."),
    ([("good", 1), ("bad", 0)], ["--num_labels=1"], "A classifier needs --num_labels >= 2. Received: --num_labels=1"),
    # Found by BertConfig, deep in the model's loading: the library's argument comes back as the flag.
    ([("good", 1), ("bad", 0)], ["--label_names=a"], "1 label names for 2 labels. Received: --label_names=['a']"),
    ([("good", 1), ("bad", 0)], ["--label_names=a,"],
     "Label names must be distinct, non-empty strings. Received: --label_names=['a', '']"),
])
def test_finetune_errors_name_the_flag_to_change(tmp_path, rows, flags, message):
    train = write_tsv(tmp_path / "train.tsv", rows)
    assert finetune_error(f"--train_file={train}", f"--eval_file={train}", f"--output_dir={tmp_path / 'run'}",
                          "--strategy=cpu", *flags) == f"error: {message}"


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate=nan"], "--learning_rate must be finite and > 0. Received: --learning_rate=nan"),
    (["--learning_rate=inf"], "--learning_rate must be finite and > 0. Received: --learning_rate=inf"),
    (["--head_lr_multiplier=-1"], "--head_lr_multiplier must be finite and > 0. Received: --head_lr_multiplier=-1.0"),
    (["--warmup_fraction=2"], "--warmup_fraction must lie in [0, 1). Received: --warmup_fraction=2.0"),
    (["--weight_decay=nan"], "--weight_decay must be finite and >= 0. Received: --weight_decay=nan"),
    (["--max_steps=0"], "--max_steps must be >= 1 or None. Received: --max_steps=0"),
    (["--batch_size=0"], "--batch_size must be >= 1. Received: --batch_size=0"),
    (["--num_buckets=-1"], "--num_buckets must lie in [0, --max_length]. Received: --num_buckets=-1, --max_length=128"),
    (["--max_length=1"], "--max_length must leave room for [CLS] and [SEP]. Received: --max_length=1"),
    (["--backend=hf", "--packing"], "--packing needs --backend='keras': transformers' BERT takes only a 2-D "
     "attention mask, so it cannot keep packed sequences apart. Received: --packing=True, --backend='hf'"),
])
def test_finetune_names_its_flags_in_the_configs_errors(argv, message):
    """`FinetuneConfig` names its arguments in backticks; finetune_bert's `one_line_errors` prints them as its flags
    (in-process: the same `config_from_flags` and `in_flag_terms`, on a FlagValues of finetune_bert's own flags)."""
    from absl import flags

    from experiments.finetune_bert import config_from_flags, define_finetune_flags
    from experiments.flags import in_flag_terms

    script_flags = flags.FlagValues()
    define_finetune_flags(script_flags)
    script_flags(["finetune_bert", *argv])
    with pytest.raises(ValueError) as error:
        config_from_flags(script_flags)
    assert in_flag_terms(str(error.value), script_flags) == message


def test_finetune_refuses_a_damaged_best_metrics_json_before_training(tmp_path):
    """It was found only after training, in the comparison with the new model's accuracy (a TypeError), with the
    run's checkpoints/ left behind."""
    model = save_tiny_classifier(tmp_path / "model")
    best = save_tiny_classifier(tmp_path / "run" / "best", {"metrics.json": {"eval_accuracy": "abc"}})
    before = sorted(os.listdir(best))
    train = write_tsv(tmp_path / "train.tsv", [("a gorgeous film", 1), ("a dull mess", 0)])
    assert finetune_error(f"--model={model}", f"--train_file={train}", f"--eval_file={train}",
                          f"--output_dir={tmp_path / 'run'}", "--max_length=8", "--batch_size=2", "--max_steps=1",
                          "--strategy=cpu") == (f"error: {best}/metrics.json is damaged: it records eval_accuracy "
                                                "'abc', not a number; restore it, or remove it to let this run "
                                                "replace best/.")
    assert os.listdir(tmp_path / "run") == ["best"] and sorted(os.listdir(best)) == before
