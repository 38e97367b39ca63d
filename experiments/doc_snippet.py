"""The design document's fine-tuning snippet, run as written (only the checkpoint path changed), then the fix.

    python -m experiments.doc_snippet

With transformers 4.57 + tf-keras 2.21, `compile(..., loss=model.compute_loss)` fails inside `fit` with
"'NoneType' object has no attribute 'dtype'". The documented fix: compile without a loss and put the labels
inside the inputs, so the model computes its own loss.

The only other change is the checkpoint: 'bert-base-uncased' needs the hub, and the offline MiniLM ships a
PyTorch-format safetensors file that `TFBertForSequenceClassification.from_pretrained` cannot read without
torch. `tf_lm.bert.hub.export_tf_checkpoint` converts it once (numpy, no torch) into a TF checkpoint directory,
and the snippet's two `from_pretrained` calls point there. This module imports transformers directly because
the snippet does; library code goes through `tf_lm.bert.hub`.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import flags
from transformers import BertTokenizer, TFBertForSequenceClassification

from experiments.flags import flag_group, run_script

FLAGS = flags.FLAGS

SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "the acting , costumes , music , cinematography and sound are all astounding",
    "a masterpiece four years in the making .",
    "one of the greatest family-oriented fantasy-adventure movies ever .",
    "the plot is nothing but boilerplate clichés from start to finish",
    "it 's a bad sign when you 're rooting for the film to end .",
    "a dull , lifeless mess .",
    "bears about as much resemblance to the experiences of most teenagers as robert de niro does to a tree .",
]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


def define_snippet_flags() -> None:
    with flag_group("snippet"):
        flags.DEFINE_string("model", "minilm", "Checkpoint to convert: 'minilm', a directory or a hub id.")
        flags.DEFINE_string("checkpoint_dir", "runs/minilm-tf", "Where the converted TF checkpoint is (or is "
                            "written).")
        flags.DEFINE_integer("epochs", 3, "Epochs of the snippet's `fit`.")


def snippet_as_written(checkpoint: str, sentences=SENTENCES, labels=LABELS, epochs: int = 3):
    """The snippet verbatim; `checkpoint` replaces 'bert-base-uncased'. Raises inside `fit` (see module doc)."""
    tokenizer = BertTokenizer.from_pretrained(checkpoint)
    model = TFBertForSequenceClassification.from_pretrained(checkpoint)
    inputs = tokenizer(sentences, padding=True, truncation=True, return_tensors="tf")
    model.compile(optimizer="adam", loss=model.compute_loss)
    return model.fit(dict(inputs), tf.constant(labels), epochs=epochs)


def snippet_fixed(checkpoint: str, sentences=SENTENCES, labels=LABELS, epochs: int = 3):
    """The snippet with the documented fix: no `loss` in `compile`, the labels inside the inputs."""
    tokenizer = BertTokenizer.from_pretrained(checkpoint)
    model = TFBertForSequenceClassification.from_pretrained(checkpoint)
    inputs = tokenizer(sentences, padding=True, truncation=True, return_tensors="tf")
    model.compile(optimizer="adam")  # the fix: the model's own loss, computed from the "labels" input
    return model.fit({**inputs, "labels": tf.constant(labels)}, epochs=epochs)


def prepare_checkpoint(model: str, checkpoint_dir: str) -> str:
    """The TF checkpoint directory the snippet loads, converted from `model` on first use."""
    from tf_lm.bert import hub

    if not os.path.isfile(os.path.join(checkpoint_dir, "config.json")):
        hub.export_tf_checkpoint(model, checkpoint_dir)
    return checkpoint_dir


def main(argv):
    del argv
    try:
        checkpoint = prepare_checkpoint(FLAGS.model, FLAGS.checkpoint_dir)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"--- the snippet as written, from_pretrained({checkpoint!r}) ---")
    try:
        snippet_as_written(checkpoint, epochs=FLAGS.epochs)
        print("it ran: this transformers version no longer has the compute_loss problem")
    except (AttributeError, TypeError) as error:
        print(f"fails in fit: {type(error).__name__}: {str(error).strip().splitlines()[-1].strip()}")
    print("--- with the fix: compile(optimizer='adam'), labels inside the inputs ---")
    losses = snippet_fixed(checkpoint, epochs=FLAGS.epochs).history["loss"]
    print("loss per epoch: " + ", ".join(f"{loss:.4f}" for loss in losses))


if __name__ == "__main__":
    define_snippet_flags()
    run_script(main)
