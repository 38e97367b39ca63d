"""Hugging Face BERT checkpoints in and out of a `BertClassifier`, with numpy and safetensors only.

One table (`_weight_map`) names, for every weight of the classifier, the checkpoint tensors it is made of; loading
reads through it and exporting writes through it, so the two cannot drift apart. Checkpoint names are first brought
to one canonical form, the PyTorch one without the `bert.` prefix (`encoder.layer.0.attention.self.query.weight`,
dense kernels `[out, in]`), whether the file was written by PyTorch or by transformers' TF classes
(`bert/encoder/layer_._0/attention/self/query/kernel:0`, kernels `[in, out]`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import numpy as np

from tf_lm.bert import checkpoint
from tf_lm.fileio import (
    EXPORT_MARKER,
    atomic_directory,
    gfile,
    read_bytes,
    read_json_object,
    safetensors_errors,
    write_export_marker,
    write_file,
)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
EXPORT_KIND = "BERT classifier"
# added_tokens.json: the tokens `add_tokens` put past vocab.txt, which transformers' older tokenizers save only there.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def resolve_local(name: str) -> str:
    """The checkpoint directory of `name` (`"minilm"` or a directory).

    Raises:
        FileNotFoundError: for a path that does not exist, or a directory without `config.json`.
        ValueError: for a hub id: this loader reads local checkpoints only.
    """
    directory = checkpoint.resolve_checkpoint(name)
    if not os.path.isdir(directory):
        raise ValueError(
            f"{name!r} is not 'minilm' or a local directory; the Keras backend reads local checkpoints only "
            "(download it first, or use `backend=hf` for hub ids)."
        )
    if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
        raise FileNotFoundError(f"No {CONFIG_FILE} in {directory!r}; is it a Hugging Face checkpoint directory?")
    return directory


def read_config(directory: str) -> dict:
    """The Hugging Face `config.json` of the checkpoint `directory`, as a dict.

    Raises:
        OSError: if it cannot be read (FileNotFoundError if it is missing).
        ValueError: if it is not valid JSON or not a JSON object (a damaged file), naming it.
    """
    return read_json_object(os.path.join(directory, CONFIG_FILE))


def _canonical(key: str, tensor: np.ndarray, tf_format: bool) -> tuple[str, np.ndarray]:
    """The PyTorch-style name without `bert.` and the tensor in PyTorch layout."""
    if tf_format:
        key = key.removesuffix(":0").replace("/", ".")
        key = re.sub(r"layer_\._(\d+)", r"layer.\1", key)
        if key.endswith(".kernel"):
            key, tensor = key.removesuffix(".kernel") + ".weight", tensor.T
        key = re.sub(r"\.embeddings$", ".weight", key)
    key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
    # TF files put the model's scope (and `bert/`) in front; PyTorch ones `bert.` or nothing.
    match = re.search(r"(^|\.)(bert\.)?((embeddings|encoder|pooler|classifier)\..*)$", key)
    return (match.group(3) if match else key), tensor


@contextlib.contextmanager
def open_safetensors(path: str):
    """`safetensors.safe_open(path, framework="np")`, whose errors for a damaged file (truncated, or a header that is
    not safetensors') become one ValueError naming it.

    Raises:
        ValueError: if the file cannot be read as safetensors.
    """
    from safetensors import safe_open

    with safetensors_errors(path), safe_open(path, framework="np") as archive:
        yield archive


def read_checkpoint(directory: str) -> dict[str, np.ndarray]:
    """Every tensor of `directory/model.safetensors`, under its canonical name (see the module docstring).

    Raises:
        FileNotFoundError: if there is no `model.safetensors`.
        ValueError: if it is damaged.
    """
    path = os.path.join(directory, SAFETENSORS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {SAFETENSORS_FILE} in {directory!r}; PyTorch .bin and TF .h5 checkpoints are not read here, "
            "so convert them to safetensors first."
        )
    tensors = {}
    with open_safetensors(path) as archive:
        tf_format = (archive.metadata() or {}).get("format") == "tf"
        for key in archive.keys():
            name, tensor = _canonical(key, archive.get_tensor(key), tf_format)
            tensors[name] = tensor
    return tensors


def _weight_map(model) -> list[tuple[object, list[str], bool]]:
    """`(variable, checkpoint names, transpose)` for every weight: a variable made of several tensors (the fused
    QKV kernel) concatenates them along its last axis; `transpose` marks dense kernels (`[out, in]` there)."""
    dense = [(model.pooler, "pooler.dense")]
    table = [
        (model.embedding.token_embeddings, ["embeddings.word_embeddings.weight"], False),
        (model.embedding.position_embeddings, ["embeddings.position_embeddings.weight"], False),
        (model.segment_embedding.embeddings, ["embeddings.token_type_embeddings.weight"], False),
        (model.embedding_norm.gamma, ["embeddings.LayerNorm.weight"], False),
        (model.embedding_norm.beta, ["embeddings.LayerNorm.bias"], False),
    ]
    for i, block in enumerate(model.blocks):
        prefix = f"encoder.layer.{i}"
        qkv = [f"{prefix}.attention.self.{part}" for part in ("query", "key", "value")]
        table += [
            (block.attention.qkv_dense.kernel, [f"{name}.weight" for name in qkv], True),
            (block.attention.qkv_dense.bias, [f"{name}.bias" for name in qkv], False),
        ]
        dense += [(block.attention.output_dense, f"{prefix}.attention.output.dense"),
                  (block.mlp_in, f"{prefix}.intermediate.dense"), (block.mlp_out, f"{prefix}.output.dense")]
        for norm, name in ((block.attention_norm, f"{prefix}.attention.output.LayerNorm"),
                           (block.mlp_norm, f"{prefix}.output.LayerNorm")):
            table += [(norm.gamma, [f"{name}.weight"], False), (norm.beta, [f"{name}.bias"], False)]
    dense.append((model.classifier, "classifier"))
    for layer, name in dense:
        table += [(layer.kernel, [f"{name}.weight"], True), (layer.bias, [f"{name}.bias"], False)]
    return table


def _is_head(names: list[str]) -> bool:
    return names[0].startswith("classifier.")


# Tensors a classifier has no use for, which transformers' BERT classifiers skip without a word too: the
# position-id buffer older PyTorch checkpoints save, and the pretraining heads (PyTorch `cls.*`, TF `mlm___cls` /
# `nsp___cls`).
_UNUSED_BY_DESIGN = re.compile(r"^embeddings\.position_ids$|(^|\.)(cls|mlm___cls|nsp___cls)\.")


def _summarise(names) -> str:
    """Tensor `names` in one line, an encoder layer's several as `encoder.layer.<i>.* (<n> tensors)`."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        layer = re.match(r"encoder\.layer\.\d+\.", name)
        groups.setdefault(f"{layer.group(0)}*" if layer else name, []).append(name)
    return ", ".join(members[0] if len(members) == 1 else f"{key} ({len(members)} tensors)"
                     for key, members in groups.items())


def load_weights(model, directory: str, require_head: bool = False) -> None:
    """Copies the checkpoint in `directory` into `model`; only the classifier may stay as initialised.

    The classifier is taken from the checkpoint when it has one of the same number of classes (a fine-tuned
    export), and otherwise left random (a bare encoder, or new classes), unless `require_head`. Every other tensor
    of the checkpoint must be used, apart from those no classifier uses (`embeddings.position_ids`, the pretraining
    heads `cls.*`).

    Args:
        model: a `BertClassifier`.
        directory: str. A checkpoint directory.
        require_head: bool, default False. Refuse a checkpoint without the model's classifier (prediction: a
            random head would print unseeded guesses).

    Raises:
        ValueError: naming the first encoder weight that is missing or has another shape, or the checkpoint's
            tensors nothing used (e.g. `config.json` says 1 layer where the weights hold 2); with `require_head`,
            for a checkpoint whose classifier is missing or has another shape; for a damaged file.
    """
    tensors = read_checkpoint(directory)
    table = _weight_map(model)
    for variable, names, transpose in table:
        parts = [tensors.get(name) for name in names]
        shape = tuple(variable.shape)
        if _is_head(names):
            if all(p is not None for p in parts) and (parts[0].T if transpose else parts[0]).shape == shape:
                variable.assign(parts[0].T if transpose else parts[0])
            elif require_head:
                found = (f"has no {names[0]!r}" if parts[0] is None else
                         f"has {names[0]!r} of shape {(parts[0].T if transpose else parts[0]).shape} where its "
                         f"config.json's {model.config.num_labels} classes need {shape}")
                raise ValueError(f"{directory!r} is not a fine-tuned classifier: its checkpoint {found}; pass the "
                                 "best/ directory of experiments.finetune_bert.")
            continue
        missing = [name for name, part in zip(names, parts) if part is None]
        if missing:
            raise ValueError(
                f"The checkpoint in {directory!r} has no weight {missing[0]!r} (nor with a 'bert.' prefix); "
                "use a BERT checkpoint of the config's architecture."
            )
        value = np.concatenate([p.T if transpose else p for p in parts], axis=-1)
        if value.shape != shape:
            raise ValueError(
                f"The checkpoint's {names[0]!r} has shape {value.shape} where the config needs {shape}; "
                f"{directory!r}/config.json does not match its weights."
            )
        variable.assign(value)
    unused = {name for name in tensors if not _UNUSED_BY_DESIGN.search(name)}
    unused -= {name for _, names, _ in table for name in names}
    if unused:
        raise ValueError(f"The checkpoint in {directory!r} holds tensors the config has no place for: "
                         f"{_summarise(unused)}; {directory!r}/config.json does not match its weights.")


def export(model, tokenizer_dir: str, directory: str, extra_json: dict[str, object] | None = None) -> None:
    """Writes `model` as a Hugging Face BertForSequenceClassification checkpoint (`write_export`), atomically.

    The files are staged beside `directory` and swapped in whole (`tf_lm.fileio.atomic_directory`); `directory`
    is replaced only if it is new, empty or an earlier export (it holds `tf_lm.fileio.EXPORT_MARKER`).

    Example:
    >>> export(model, resolve_local("minilm"), "runs/sst2/best")
    """
    with atomic_directory(directory, EXPORT_MARKER, EXPORT_KIND) as staging:
        write_export(model, tokenizer_dir, staging, extra_json)


def write_export(model, tokenizer_dir: str, directory: str, extra_json: dict[str, object] | None = None) -> None:
    """Writes `config.json`, a PyTorch-named `model.safetensors`, the WordPiece files and the export marker into
    `directory`.

    What `from_pretrained` of any framework reads (and `tf_lm.bert.hub.load_classifier` without torch).

    Args:
        model: a `BertClassifier`.
        tokenizer_dir: str. The checkpoint directory whose tokenizer files (`vocab.txt`, `tokenizer.json`, ...)
            are copied.
        directory: str. An existing directory (a staging one: see `export`).
        extra_json: dict, default None. `{"file.json": object}` written beside the weights.
    """
    from safetensors.numpy import save

    tensors = {}
    for variable, names, transpose in _weight_map(model):
        value = np.asarray(variable.numpy(), dtype=np.float32)
        parts = np.split(value, len(names), axis=-1)
        for name, part in zip(names, parts):
            key = name if _is_head(names) else f"bert.{name}"
            tensors[key] = np.ascontiguousarray(part.T if transpose else part)
    # Serialised in memory and written through `write_file`, so `directory` may be on any TensorFlow filesystem.
    write_file(os.path.join(directory, SAFETENSORS_FILE), save(tensors, metadata={"format": "pt"}))
    write_file(os.path.join(directory, CONFIG_FILE), json.dumps(model.config.to_hf(), indent=2))
    for filename in TOKENIZER_FILES:
        source = os.path.join(tokenizer_dir, filename)
        if gfile(source).exists(source):
            write_file(os.path.join(directory, filename), read_bytes(source))
    for filename, content in (extra_json or {}).items():
        write_file(os.path.join(directory, filename), json.dumps(content, indent=2))
    write_export_marker(directory, __name__, EXPORT_KIND)
