"""experiments.finetune_bert and experiments.predict_bert end to end: a tiny run, its predictions, bad inputs."""

import io
import json

import pytest
from conftest import failure_line, run_module

from experiments.benchmarks.common import SHARED_DATA

SST2 = SHARED_DATA / "sst2"


def assert_one_line_error(result, match):
    last = failure_line(result)
    assert last.startswith("error:") and match in last, last


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
    result = run_module("experiments.predict_bert", f"--model_dir={tmp_path}", "a sentence")
    assert_one_line_error(result, "holds a TransformerLM (a language model of experiments.train_lm), not a fine-tuned")
    assert ".bin" not in result.stderr
