"""Writing transformers models as Hugging Face checkpoints, atomically."""

from __future__ import annotations

import json
import os
import tempfile

import transformers

from tf_lm.bert.hub.loading import load_model, load_tokenizer, quiet_transformers
from tf_lm.bert.weights import EXPORT_KIND
from tf_lm.fileio import EXPORT_MARKER, atomic_directory, is_local, read_bytes, write_export_marker, write_file


def save_pretrained(model_dir: str, model, tokenizer, extra_json: dict[str, dict] | None = None) -> None:
    """Writes `model` (safetensors), `tokenizer` and `extra_json` files into `model_dir`, replacing it whole.

    Everything is written into a sibling staging directory first, then swapped in by renames
    (`tf_lm.fileio.atomic_directory`), so a crash never leaves a half-written model where a good one was.

    Args:
        model_dir: str. Target directory: created, or replaced if it is empty or an earlier export (it holds
            `tf_lm.fileio.EXPORT_MARKER`).
        model: a transformers TF model.
        tokenizer: its tokenizer.
        extra_json: dict, default None. `{"file.json": object}` written beside the weights.

    Example:
    >>> save_pretrained("runs/sst2/best", model, tokenizer, {"metrics.json": {"accuracy": 0.9}})
    """
    with atomic_directory(model_dir, marker=EXPORT_MARKER, kind=EXPORT_KIND) as staging:
        # transformers writes local files only: for a TensorFlow filesystem's target they are copied over.
        with tempfile.TemporaryDirectory(prefix="tf_lm_hf_save_") as scratch:
            local = staging if is_local(staging) else scratch
            with quiet_transformers():
                model.save_pretrained(local, safe_serialization=True)
                tokenizer.save_pretrained(local)
            if local != staging:
                for name in os.listdir(local):
                    write_file(os.path.join(staging, name), read_bytes(os.path.join(local, name)))
        for filename, content in (extra_json or {}).items():
            write_file(os.path.join(staging, filename), json.dumps(content, indent=2))
        write_export_marker(staging, __name__, EXPORT_KIND)


def export_tf_checkpoint(name: str, out_dir: str) -> str:
    """Writes the encoder of `name` as a TF checkpoint (+ tokenizer) that plain `from_pretrained` loads.

    `TFBertForSequenceClassification.from_pretrained` cannot read a PyTorch-format safetensors file without
    torch (transformers 4.57 fails with "'builtins.safe_open' object is not iterable"); this converts it once
    with the numpy loader, so the classic snippet only needs the path changed.

    Args:
        name: str. `"minilm"`, a checkpoint directory or a hub id.
        out_dir: str. Where to write (`config.json`, TF-format `model.safetensors`, tokenizer files).

    Returns:
        str: `out_dir`.

    Raises:
        ValueError: if `out_dir` already holds files (it is written whole, so nothing there is overwritten).

    Example:
    >>> path = export_tf_checkpoint("minilm", "/tmp/minilm-tf")
    >>> model = transformers.TFBertForSequenceClassification.from_pretrained(path)
    """
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir!r} already exists and is not empty; pick a new directory for the checkpoint.")
    encoder = load_model(transformers.TFAutoModel, name)
    save_pretrained(out_dir, encoder, load_tokenizer(name))
    return out_dir
