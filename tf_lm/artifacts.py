"""A trained model directory: `model/` holding `model.keras`, `config.json` and `tokenizer/`, so nothing else is
needed to use it.

The three live in their own subdirectory, beside whatever else a run keeps in its directory (checkpoints,
metrics), so that a save replaces them as one set (`tf_lm.fileio.atomic_directory`): a crash leaves the old set
or the new one, never a new `model.keras` beside an old `config.json`.
"""

from __future__ import annotations

import json
import os

import keras

from tf_lm.configs import LMConfig
from tf_lm.fileio import atomic_directory, gfile, write_file
from tf_lm.model import TransformerLM

SAVED_DIR = "model"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


def saved_dir(model_dir: str) -> str:
    """The subdirectory of `model_dir` that `save_model_dir` writes: `<model_dir>/model`."""
    return os.path.join(model_dir, SAVED_DIR)


def save_model_dir(model_dir: str, model: TransformerLM, tokenizer) -> None:
    """Saves `model` (as `.keras`), its config (JSON) and `tokenizer` into `<model_dir>/model/`, as one set.

    Raises:
        ValueError: if `<model_dir>/model` exists and is neither empty nor a saved model (nothing is touched).
    """
    with atomic_directory(saved_dir(model_dir), marker=CONFIG_FILE) as staging:
        model.save(os.path.join(staging, MODEL_FILE))
        write_file(os.path.join(staging, CONFIG_FILE), json.dumps(model.config.to_dict(), indent=2))
        tokenizer.save(os.path.join(staging, TOKENIZER_DIR))


def read_config(model_dir: str) -> LMConfig:
    path = os.path.join(saved_dir(model_dir), CONFIG_FILE)
    if not gfile(path).exists(path):
        raise FileNotFoundError(
            f"No {CONFIG_FILE} in {model_dir!r} (looked in its {SAVED_DIR}/); is it a tf_lm model directory?"
        )
    with gfile(path).GFile(path) as f:
        return LMConfig.from_dict(json.loads(f.read()))


def load_model_dir(model_dir: str):
    """Returns `(model, tokenizer)` from a directory written by `save_model_dir`.

    Raises:
        FileNotFoundError: if the directory, its model or its tokenizer is missing.
        ValueError: if the model file is corrupt or the tokenizer does not match the model's vocabulary.
    """
    from tf_lm.data.tokenizers import load_tokenizer

    model_path = os.path.join(saved_dir(model_dir), MODEL_FILE)
    if not gfile(model_path).exists(model_path):
        raise FileNotFoundError(
            f"No {MODEL_FILE} in {model_dir!r} (looked in its {SAVED_DIR}/); train one with "
            "`python -m experiments.train_lm`."
        )
    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as error:  # Keras raises a zoo of types for a damaged zip or config.
        raise ValueError(f"Could not load {model_path}: the file is damaged or not a tf_lm model ({error}).") from None
    tokenizer = load_tokenizer(os.path.join(saved_dir(model_dir), TOKENIZER_DIR))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"The tokenizer in {model_dir!r} has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; the directory mixes files from different runs."
        )
    return model, tokenizer
