"""A trained model directory: `model/` holding `model.keras`, `config.json` and `tokenizer/`, so nothing else is
needed to use it, and `tf_lm.fileio.EXPORT_MARKER`, so a save replaces only a `model/` this project wrote.

The three live in their own subdirectory, beside whatever else a run keeps in its directory (checkpoints,
metrics), so that a save replaces them as one set (`tf_lm.fileio.atomic_directory`): a crash leaves the old set
or the new one, never a new `model.keras` beside an old `config.json`. Only loading a model imports Keras: a
script checks a directory, and reads its config, before TensorFlow loads.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import TYPE_CHECKING

from tf_lm.configs import LMConfig
from tf_lm.fileio import (
    EXPORT_MARKER,
    atomic_directory,
    check_replaceable,
    gfile,
    normalise_path,
    read_json_object,
    recorded_tokenizer,
    write_export_marker,
    write_file,
)

if TYPE_CHECKING:
    from tf_lm.model import TransformerLM

SAVED_DIR = "model"
EXPORT_KIND = "trained tf_lm model"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


def saved_dir(model_dir: str) -> str:
    """The subdirectory of `model_dir` that `save_model_dir` writes: `<model_dir>/model`."""
    return os.path.join(model_dir, SAVED_DIR)


def _saved_before_markers(directory: str) -> bool:
    """Whether `directory` is a model/ that `save_model_dir` wrote before it marked its output: `model.keras`
    beside a `config.json` that is an `LMConfig` (a downloaded HF model has a config.json, but not these two)."""
    files = gfile(directory)
    if files.exists(os.path.join(directory, EXPORT_MARKER)) or not files.exists(os.path.join(directory, MODEL_FILE)):
        return False
    try:
        LMConfig.from_dict(read_json_object(os.path.join(directory, CONFIG_FILE)))
    except (OSError, ValueError, TypeError):
        return False
    return True


def check_saveable(model_dir: str) -> None:
    """Raises ValueError if `save_model_dir(model_dir, ...)` would refuse `<model_dir>/model` (a file, or a directory
    that is not a saved model): a training run checks this before it trains, not at its end."""
    directory = saved_dir(model_dir)
    if not _saved_before_markers(directory):
        check_replaceable(directory, EXPORT_MARKER, EXPORT_KIND)


def save_model_dir(model_dir: str, model: TransformerLM, tokenizer) -> None:
    """Saves `model` (as `.keras`), its config (JSON) and `tokenizer` into `<model_dir>/model/`, as one set.

    Raises:
        ValueError: if `<model_dir>/model` exists and is neither empty nor a saved model (nothing is touched).
    """
    directory = saved_dir(model_dir)
    if _saved_before_markers(directory):
        # An earlier version's model/ is ours as well (a resumed run of it rewrites model/ at its end): marked
        # now, it is replaced like any other.
        write_export_marker(directory, __name__, EXPORT_KIND)
    with atomic_directory(directory, marker=EXPORT_MARKER, kind=EXPORT_KIND) as staging:
        model.save(os.path.join(staging, MODEL_FILE))
        write_file(os.path.join(staging, CONFIG_FILE), json.dumps(model.config.to_dict(), indent=2))
        tokenizer.save(os.path.join(staging, TOKENIZER_DIR))
        write_export_marker(staging, __name__, EXPORT_KIND, tokenizer_fingerprint=tokenizer.fingerprint)


def read_config(model_dir: str) -> LMConfig:
    """The `LMConfig` in `<model_dir>/model/config.json`.

    Raises:
        FileNotFoundError: if there is none.
        OSError, ValueError: if it cannot be read, or is damaged or not an `LMConfig` (the message names it).
    """
    path = os.path.join(saved_dir(model_dir), CONFIG_FILE)
    if not gfile(path).exists(path):
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in {model_dir!r} (looked in its {SAVED_DIR}/); is it a tf_lm model directory?"
        )
    return LMConfig.from_dict(read_json_object(path))


def keras_load_failure(model_path: str, error: Exception) -> str:
    """Why Keras could not load `model_path`, in one line.

    Keras says "File not found" for a file that is not a zip (truncated, or another kind), and its message for
    weights that do not fit the config runs to dozens of lines: an overview ending in ":", its example, then a
    list of every layer.
    """
    files = gfile(model_path)
    if files.isdir(model_path):
        return "it is a directory, not a .keras file"
    with files.GFile(model_path, "rb") as f:
        # A zip's directory is at its end: a file cut short keeps its first bytes and loses that.
        if f.read(4) != b"PK\x03\x04" or not zipfile.is_zipfile(f):
            return "it is not a .keras zip archive: cut short, or another kind of file"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def load_model_dir(model_dir: str):
    """Returns `(model, tokenizer)` from a directory written by `save_model_dir`.

    Raises:
        FileNotFoundError: if the directory, its model, config or tokenizer is missing.
        ValueError: if the model file is corrupt, or the config or the tokenizer does not match the model (a tokenizer
            that is not the one saved with it is refused, so no text is encoded to ids the model never learnt).
    """
    from tf_lm.data.tokenizers import load_tokenizer

    model_path = os.path.join(saved_dir(model_dir), MODEL_FILE)
    if not gfile(model_path).exists(model_path):
        if gfile(model_dir).exists(os.path.join(model_dir, MODEL_FILE)):  # the model/ subdirectory itself
            raise FileNotFoundError(f"No {MODEL_FILE} in {model_dir!r} (looked in its {SAVED_DIR}/); pass the run "
                                    f"directory that holds it: {os.path.dirname(normalise_path(model_dir))!r}.")
        raise FileNotFoundError(
            f"No {MODEL_FILE} in {model_dir!r} (looked in its {SAVED_DIR}/); train one with "
            "`python -m experiments.train_lm`."
        )
    import keras

    import tf_lm.model  # noqa: F401  registers TransformerLM, which safe mode loads by its registered name
    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as error:  # Keras raises a zoo of types for a damaged zip or config.
        raise ValueError(f"Could not load {model_path}: the file is damaged or not a tf_lm model "
                         f"({keras_load_failure(model_path, error)}).") from None
    if read_config(model_dir) != model.config:
        raise ValueError(
            f"The {CONFIG_FILE} in {model_dir!r} contradicts its {MODEL_FILE}; the directory mixes files from "
            "different runs."
        )
    tokenizer = load_tokenizer(os.path.join(saved_dir(model_dir), TOKENIZER_DIR))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"The tokenizer in {model_dir!r} has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; the directory mixes files from different runs."
        )
    if recorded_tokenizer(saved_dir(model_dir)) not in (None, tokenizer.fingerprint):
        # A character dropped from a char tokenizer's file still loads, with every id after it shifted by one.
        raise ValueError(
            f"The tokenizer in {model_dir!r} is not the one its model was saved with: its files were edited or "
            "damaged since, or come from another run; restore them, or save the model with its tokenizer again."
        )
    return model, tokenizer

