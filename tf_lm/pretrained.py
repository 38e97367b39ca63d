"""A pretrained starting point for training: a tf_lm model directory or an HF GPT-2 checkpoint directory.

Both read into the same three things: the `LMConfig`, the tokenizer, and the weights as a GPT-2 state dict
(PyTorch names, numpy; see `tf_lm.convert`), which `load_gpt2_state` copies into a freshly built model. Weights
go through numpy rather than a loaded Keras model, so the model that trains is built once, inside the
distribution strategy's scope, and only its values come from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING

import numpy as np

from tf_lm import artifacts
from tf_lm.configs import LMConfig
from tf_lm.convert import GPT2_WEIGHTS_FILE, gpt2_state, load_gpt2_state, read_gpt2_config, read_gpt2_state
from tf_lm.data.tokenizers import CHAR_FILE, load_tokenizer
from tf_lm.fileio import gfile, not_a_directory, recorded_tokenizer

if TYPE_CHECKING:  # Keras loads TensorFlow, which describing a checkpoint (`pretrained_config`) does not need
    from tf_lm.model import TransformerLM

# What may differ from the checkpoint: the context may shrink (positions cropped) and dropout is a training choice.
ADJUSTABLE_FIELDS = ("block_size", "dropout")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A checkpoint read for fine-tuning.

    Attributes:
        directory: str. Where it was read from.
        config: `LMConfig` of the checkpoint.
        tokenizer: its tokenizer (`CharTokenizer` or `BPETokenizer`).
        state: dict of GPT-2 PyTorch names (`h.0.attn.c_attn.weight`) -> float32 arrays; empty after
            `release_weights`.
        fingerprint: str. sha256 of every tensor's name and bytes: a resumed run checks that its base has not
            changed.
    """

    directory: str
    config: LMConfig
    tokenizer: object
    state: dict
    fingerprint: str = dataclasses.field(init=False)

    def __post_init__(self):
        digest = hashlib.sha256()
        for name in sorted(self.state):
            digest.update(name.encode("utf-8"))
            digest.update(np.ascontiguousarray(self.state[name], dtype=np.float32).tobytes())
        object.__setattr__(self, "fingerprint", digest.hexdigest())

    def state_for(self, config: LMConfig) -> dict:
        """The weights for a model of `config` (see `check_config`): positions cropped to its `block_size`, as
        nanoGPT's `crop_block_size` does.

        Raises:
            ValueError: if `config` contradicts the checkpoint's.
            RuntimeError: after `release_weights`.
        """
        check_config(config, self.config, self.directory)
        if not self.state:
            raise RuntimeError(f"The weights read from {self.directory!r} were released; read the checkpoint again.")
        return {**self.state, "wpe.weight": self.state["wpe.weight"][: config.block_size]}

    def release_weights(self) -> None:
        """Drops the host copy of the weights once a model holds them: for GPT-2 124M it is ~475 MiB that would
        otherwise stay resident for the whole training run. The config, tokenizer and fingerprint remain."""
        self.state.clear()


def _state(model: TransformerLM) -> dict:
    return {name.removeprefix("transformer."): value for name, value in gpt2_state(model).items()}


def _exists(path: str) -> bool:
    return gfile(path).exists(path)


def _kind(directory: str) -> str:
    if _exists(os.path.join(artifacts.saved_dir(directory), artifacts.MODEL_FILE)):
        return "tf_lm"
    if _exists(os.path.join(directory, GPT2_WEIGHTS_FILE)):
        return "hf"
    # HF checkpoints this reader cannot take, named as such rather than as "neither format".
    for name, why in (("model.safetensors.index.json", "sharded weights (model-0000x-of-0000y.safetensors)"),
                      ("pytorch_model.bin", "only PyTorch pickle weights (pytorch_model.bin)"),
                      ("tf_model.h5", "only Keras 2 H5 weights (tf_model.h5)")):
        if _exists(os.path.join(directory, name)):
            raise ValueError(
                f"{directory!r} is an HF checkpoint with {why}; only a single model.safetensors is read. Save it "
                "again with save_pretrained(..., safe_serialization=True, max_shard_size='100GB')."
            )
    raise ValueError(
        f"{directory!r} is neither a tf_lm model directory (model/ holding model.keras + config.json + tokenizer/) "
        "nor an HF GPT-2 checkpoint directory (config.json + model.safetensors + the tokenizer files); pass one."
    )


def _described(directory: str) -> tuple[str, LMConfig]:
    """`(kind "tf_lm" or "hf", LMConfig)` of a checkpoint directory."""
    problem = not_a_directory(directory)
    if problem is not None:
        raise FileNotFoundError(f"The pretrained checkpoint directory {directory!r} {problem}.")
    kind = _kind(directory)
    return kind, artifacts.read_config(directory) if kind == "tf_lm" else read_gpt2_config(directory)


def pretrained_config(directory: str) -> tuple[LMConfig, str]:
    """`(LMConfig, tokenizer kind "char" or "bpe")` of a checkpoint directory, without reading its weights.

    Raises:
        FileNotFoundError: if `directory` does not exist, or an HF checkpoint in it has no tokenizer files.
        ValueError: if it is neither format, or its config is not one `TransformerLM` can express.
    """
    kind, config = _described(directory)
    if kind == "tf_lm":
        char = _exists(os.path.join(artifacts.saved_dir(directory), artifacts.TOKENIZER_DIR, CHAR_FILE))
    else:
        # Read whole: an HF export of a char model holds a tokenizer.json only its shape tells apart from BPE's.
        char = load_tokenizer(directory).is_char_level
    return config, "char" if char else "bpe"


def read_pretrained(directory: str) -> Pretrained:
    """Reads a tf_lm model directory or an HF GPT-2 checkpoint (PyTorch or TF tensor names) with numpy.

    Raises:
        FileNotFoundError: if the directory or a file it needs is missing.
        ValueError: if it is neither format, a tensor is missing or misshapen, or the tokenizer has more ids than
            the model's vocabulary.

    Example:
    >>> base = read_pretrained("runs/pydoc")  # doctest: +SKIP
    >>> load_gpt2_state(TransformerLM(base.config), base.state)  # doctest: +SKIP
    """
    from tf_lm.model import TransformerLM

    kind, config = _described(directory)
    if kind == "tf_lm":
        model, tokenizer = artifacts.load_model_dir(directory)
        return Pretrained(directory, config, tokenizer, _state(model))
    state = read_gpt2_state(directory)
    # Through a model once: the names (PyTorch or TF) and every shape are checked, and the state comes out in
    # one naming.
    state = _state(load_gpt2_state(TransformerLM(config), state))
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"The tokenizer in {directory!r} has {tokenizer.vocab_size} ids but the model only {config.vocab_size}; "
            "the tokenizer files belong to another checkpoint."
        )
    if recorded_tokenizer(directory) not in (None, tokenizer.fingerprint):  # an export_hf directory records it
        raise ValueError(
            f"The tokenizer files in {directory!r} are not the ones exported with its weights: edited or damaged "
            "since, or copied from another export; restore them, or export the model again."
        )
    return Pretrained(directory, config, tokenizer, state)


def check_config(config: LMConfig, base: LMConfig, directory: str) -> None:
    """Raises ValueError unless `config` is `base` with at most a shorter context and another dropout."""
    fixed = [field.name for field in dataclasses.fields(LMConfig) if field.name not in ADJUSTABLE_FIELDS]
    changed = [f"`{name}={getattr(config, name)}` (the checkpoint has {getattr(base, name)})" for name in fixed
               if getattr(config, name) != getattr(base, name)]
    if changed:
        raise ValueError(
            f"The model config contradicts the checkpoint in {directory!r}: {', '.join(changed)}; the architecture "
            "comes from the checkpoint, so leave it (and `preset`) unset."
        )
    if config.block_size > base.block_size:
        raise ValueError(
            f"`block_size={config.block_size}` exceeds the {base.block_size} positions of the checkpoint in "
            f"{directory!r}; use a `block_size` <= {base.block_size}."
        )
