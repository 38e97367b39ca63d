"""The design document's fine-tuning snippet, run exactly as written (only the checkpoint changed), then with the fix.

    python -m experiments.doc_snippet

With transformers 4.57 + tf-keras 2.21, `compile(..., loss=model.compute_loss)` fails inside `fit` with
"'NoneType' object has no attribute 'dtype'". The one-line fix: `model.compile(optimizer='adam')`, so the model
computes its own loss from the `labels` already among the inputs; every other line stays as written.

`SNIPPET` is the document's code character for character (a test compares it with
`tests/fixtures/design_doc_snippet.py`). The only substitution is the checkpoint: 'bert-base-uncased' needs the hub,
and the offline MiniLM ships a PyTorch-format safetensors file that `TFBertForSequenceClassification.from_pretrained`
cannot read without torch. `tf_lm.bert.hub.export_tf_checkpoint` converts it once (numpy, no torch) into a TF
checkpoint directory, and the snippet's two `from_pretrained` calls point there.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments.flags import flag_group, one_line_errors, run_script

FLAGS = flags.FLAGS

SNIPPET = """\
import tensorflow as tf
from transformers import BertTokenizer, TFBertForSequenceClassification

# Load pre-trained model and tokenizer
tokenizer = BertTokenizer.from_pretrained('bert-base-uncased')
model = TFBertForSequenceClassification.from_pretrained('bert-base-uncased')

# Prepare training data
texts = ['hello world!', 'machine learning is fun.']
labels = [1, 0]
inputs = tokenizer(texts, return_tensors='tf', padding=True, truncation=True)
inputs['labels'] = tf.constant(labels)

# Train the model
model.compile(optimizer='adam', loss=model.compute_loss)
model.fit(inputs, epochs=3)
"""
CHECKPOINT = "'bert-base-uncased'"
BROKEN_LINE = "model.compile(optimizer='adam', loss=model.compute_loss)"
FIXED_LINE = "model.compile(optimizer='adam')"
# Beside the converted checkpoint: which --model it was converted from, so another --model is not run on it.
SOURCE_FILE = "tf_lm_source.json"


def define_snippet_flags() -> None:
    with flag_group("snippet"):
        flags.DEFINE_string("model", "minilm", "Checkpoint to convert: 'minilm', a directory or a hub id.")
        flags.DEFINE_string("checkpoint_dir", "runs/minilm-tf", "Where the converted TF checkpoint is (or is "
                            "written).")


def snippet_code(checkpoint: str, fixed: bool = False) -> str:
    """The snippet with `checkpoint` in place of 'bert-base-uncased' (and, if `fixed`, the one-line fix)."""
    code = SNIPPET.replace(CHECKPOINT, repr(checkpoint))
    return code.replace(BROKEN_LINE, FIXED_LINE) if fixed else code


def run_snippet(checkpoint: str, fixed: bool = False) -> dict:
    """Executes `snippet_code(checkpoint, fixed)`; returns its variables (`model`, `inputs`, ...)."""
    namespace = {"__name__": "design_doc_snippet"}
    exec(compile(snippet_code(checkpoint, fixed), "design_doc_snippet", "exec"), namespace)
    return namespace


def error_line(error: BaseException) -> str:
    """`Type: message` on one line; Keras re-raises with the type already in the message, which is not repeated."""
    message = str(error).strip().splitlines()[-1].strip() if str(error).strip() else ""
    name = type(error).__name__
    return message if message.startswith(f"{name}:") else f"{name}: {message}"


def prepare_checkpoint(model: str, checkpoint_dir: str) -> str:
    """The TF checkpoint directory the snippet loads, converted from `model` on first use.

    Raises:
        ValueError: if `checkpoint_dir` holds the conversion of another model (recorded in `SOURCE_FILE`).
    """
    from tf_lm.bert import hub
    from tf_lm.fileio import atomic_write, read_json_object

    source = os.path.join(checkpoint_dir, SOURCE_FILE)
    if not os.path.isfile(os.path.join(checkpoint_dir, "config.json")):
        hub.export_tf_checkpoint(model, checkpoint_dir)
        atomic_write(source, json.dumps({"model": model}))
    elif os.path.isfile(source) and (converted := read_json_object(source).get("model")) != model:
        raise ValueError(f"--checkpoint_dir={checkpoint_dir} holds the conversion of {converted!r}, not of "
                         f"--model={model}; pass another --checkpoint_dir.")
    return checkpoint_dir


def main(argv):
    del argv
    with one_line_errors():
        checkpoint = prepare_checkpoint(FLAGS.model, FLAGS.checkpoint_dir)
    print(f"--- the snippet as written, 'bert-base-uncased' -> {checkpoint!r} ---", flush=True)
    try:
        run_snippet(checkpoint)
        print("it ran: this transformers version no longer has the compute_loss problem")
    except (AttributeError, TypeError) as error:
        print(f"fails in fit: {error_line(error)}")
    print(f"--- with the one-line fix: {FIXED_LINE} ---", flush=True)
    losses = run_snippet(checkpoint, fixed=True)["model"].history.history["loss"]
    print("loss per epoch: " + ", ".join(f"{loss:.4f}" for loss in losses))


if __name__ == "__main__":
    define_snippet_flags()
    run_script(main)
