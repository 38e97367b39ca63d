"""experiments.doc_snippet: the classic snippet fails as documented offline, the fix trains (loss falls)."""

import numpy as np
import pytest
from transformers import TFBertForSequenceClassification

from experiments import doc_snippet
from tf_lm.bert import hub

SENTENCES = doc_snippet.SENTENCES[:2] + doc_snippet.SENTENCES[4:6]
LABELS = doc_snippet.LABELS[:2] + doc_snippet.LABELS[4:6]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return doc_snippet.prepare_checkpoint("minilm", str(tmp_path_factory.mktemp("snippet") / "minilm-tf"))


def test_exported_checkpoint_is_the_same_encoder_through_from_pretrained(checkpoint):
    tokenizer = hub.load_tokenizer("minilm")
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    ours = hub.load_classifier("minilm", num_labels=2).bert(batch).last_hidden_state.numpy()
    theirs = TFBertForSequenceClassification.from_pretrained(checkpoint).bert(batch).last_hidden_state.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


def test_snippet_as_written_fails_inside_fit(checkpoint):
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'dtype'"):
        doc_snippet.snippet_as_written(checkpoint, SENTENCES, LABELS, epochs=1)


def test_fixed_snippet_trains_and_its_loss_falls_over_three_epochs(checkpoint):
    losses = doc_snippet.snippet_fixed(checkpoint, SENTENCES, LABELS, epochs=3).history["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[2] < losses[0] - 0.05, losses
