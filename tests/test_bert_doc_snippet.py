"""experiments.doc_snippet: it runs the design document's code verbatim; as written it fails in fit, the fix trains."""

import re
from pathlib import Path

import numpy as np
import pytest
from transformers import TFBertForSequenceClassification

from experiments import doc_snippet
from tf_lm.bert import hub

FIXTURE = Path(__file__).parent / "fixtures" / "design_doc_snippet.py"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return doc_snippet.prepare_checkpoint("minilm", str(tmp_path_factory.mktemp("snippet") / "minilm-tf"))


def test_the_code_run_is_the_documents_verbatim():
    document = FIXTURE.read_text()
    assert doc_snippet.SNIPPET == document
    as_written = doc_snippet.snippet_code("/ckpt")
    assert as_written == document.replace("'bert-base-uncased'", "'/ckpt'")
    fixed = doc_snippet.snippet_code("/ckpt", fixed=True).splitlines()
    assert [a for a, b in zip(fixed, as_written.splitlines()) if a != b] == ["model.compile(optimizer='adam')"]
    indented = "".join("    " + line if line.strip() else line for line in document.splitlines(True))
    assert indented in README.read_text(), "the README must show the snippet verbatim (an indented code block)"


def test_exported_checkpoint_is_the_same_encoder_through_from_pretrained(checkpoint):
    tokenizer = hub.load_tokenizer("minilm")
    batch = dict(tokenizer(["hello world!", "machine learning is fun."], padding=True, return_tensors="np"))
    ours = hub.load_classifier("minilm", num_labels=2).bert(batch).last_hidden_state.numpy()
    theirs = TFBertForSequenceClassification.from_pretrained(checkpoint).bert(batch).last_hidden_state.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


def test_a_conversion_is_reused_for_its_own_model_only(checkpoint):
    assert doc_snippet.prepare_checkpoint("minilm", checkpoint) == checkpoint
    with pytest.raises(ValueError, match=r"holds the conversion of 'minilm', not of --model=\./other-bert"):
        doc_snippet.prepare_checkpoint("./other-bert", checkpoint)


def test_a_damaged_conversion_record_is_named(tmp_path):
    """Valid JSON of another kind failed in `.get` (an AttributeError, printed as a traceback)."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / doc_snippet.SOURCE_FILE).write_text("[]")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / doc_snippet.SOURCE_FILE} is damaged: it holds an "
                                                   "array, not an object")):
        doc_snippet.prepare_checkpoint("minilm", str(tmp_path))


def test_snippet_as_written_fails_inside_fit(checkpoint):
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'dtype'") as caught:
        doc_snippet.run_snippet(checkpoint)
    line = doc_snippet.error_line(caught.value)
    assert line.count("AttributeError") == 1 and line.endswith("'NoneType' object has no attribute 'dtype'"), line


def test_fixed_snippet_trains_and_its_loss_falls_over_three_epochs(checkpoint):
    losses = doc_snippet.run_snippet(checkpoint, fixed=True)["model"].history.history["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[2] < losses[0] - 0.05, losses
