"""Loading Hugging Face models and tokenizers as transformers' TF (tf_keras) classes, and what the loop asks of them.

Model names resolve as `tf_lm.bert.checkpoint.resolve_checkpoint` says. From a directory, a PyTorch-format
`model.safetensors` (what most hub checkpoints and sentence-transformers ship) is read with `safetensors.numpy`
and copied in by transformers' own name mapping, so no torch is needed; TF weights (`tf_model.h5`, TF-format
safetensors) load with `from_pretrained`. A hub id is fetched by `from_pretrained`; when the hub cannot be
reached it is taken from the local cache or fails at once with one sentence (transformers itself would retry
for minutes).
"""

from __future__ import annotations

import contextlib
import os
import re

import tf_keras
import transformers
from transformers.activations_tf import ACT2FN
from transformers.modeling_tf_pytorch_utils import (
    convert_tf_weight_name_to_pt_weight_name,
    load_pytorch_state_dict_in_tf2_model,
)

from tf_lm.bert.checkpoint import hub_reachable, resolve_checkpoint
from tf_lm.bert.config import check_label_names, check_precision
from tf_lm.bert.tokenizer import (
    ADDED_TOKENS_FILE,
    read_special_tokens_map,
    read_tokenizer_config,
    read_tokenizer_json,
)
from tf_lm.bert.weights import open_safetensors, read_config
from tf_lm.fileio import check_json_types, read_json_object

_CONFIG_FILE = "config.json"
_SAFETENSORS_FILE = "model.safetensors"
_TF_H5_FILE = "tf_model.h5"
# The JSON objects beside the vocabulary that `AutoTokenizer.from_pretrained` reads, besides the two tokenizer
# files that `tf_lm.bert.tokenizer` reads.
_TOKENIZER_JSON_FILES = (ADDED_TOKENS_FILE, _CONFIG_FILE)


def _is_size(value) -> bool:
    return type(value) is int and value >= 1


# The `config.json` fields that transformers' TF BERT family builds its layers from: of another type, or naming an
# activation it does not know, they fail deep inside (a TypeError, a KeyError), printed by the scripts as tracebacks.
_CONFIG_TYPES = {
    "model_type": (lambda value: isinstance(value, str), "a model type name"),
    **{name: (_is_size, "a positive integer") for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                           "num_attention_heads", "intermediate_size",
                                                           "max_position_embeddings", "type_vocab_size")},
    "hidden_act": (lambda value: isinstance(value, str) and value in ACT2FN,
                   f"an activation transformers knows ({', '.join(sorted(ACT2FN))})"),
}


@contextlib.contextmanager
def quiet_transformers():
    """Silences transformers' chatter; `_check_loading` reports what matters in one sentence."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def _from_hub(loader, name: str, **kwargs):
    """`loader.from_pretrained(name)` for a hub id, failing fast and in one sentence when offline."""
    if not hub_reachable():
        try:
            return loader.from_pretrained(name, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            raise ValueError(
                f"Model {name!r} is not 'minilm' or a local directory, the Hugging Face hub is unreachable "
                "(offline) and there is no cached copy; use 'minilm' or a checkpoint directory."
            ) from None
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"Could not load {name!r} from the Hugging Face hub: {reason}") from None


def _safetensors_format(path: str) -> str | None:
    with open_safetensors(path) as archive:  # a damaged file is a ValueError naming it
        return (archive.metadata() or {}).get("format")


def _head_layers(model) -> set[str]:
    """The names of the layers above the pretrained base model (the task head): the first part of their weights'
    keys, PyTorch-named (`classifier.weight`) or TF-named (`classifier/kernel:0`)."""
    return {layer.name for layer in model.layers if layer.name != model.base_model_prefix}


def _check_loading(model, info: dict, checkpoint: str) -> None:
    """Every weight but the task head must come from the checkpoint: no silently random encoder layers. The head
    may start random: a bare encoder has none, and a fine-tuned one given another `num_labels` one of other shapes.
    And every tensor of the checkpoint must have a place, but those transformers' class skips by design (the
    pretraining heads) and the position-id buffer: else a `config.json` of fewer layers than the weights would
    silently drop the rest, as the keras backend refuses to (`tf_lm.bert.weights.load_weights`)."""
    head_layers = _head_layers(model)
    keys = info["missing_keys"] + [key for key, *_ in info["mismatched_keys"]]
    problems = [key for key in keys if re.split(r"[./]", key, maxsplit=1)[0] not in head_layers]
    if problems:
        raise ValueError(
            f"The checkpoint {checkpoint!r} does not fit a {type(model).__name__}: weights {problems[:5]} are "
            "missing or have other shapes; use a checkpoint of the same architecture."
        )
    skipped = [*(model._keys_to_ignore_on_load_unexpected or []), r"position_ids"]
    unused = sorted(key for key in info["unexpected_keys"] if not any(re.search(p, key) for p in skipped))
    if unused:
        raise ValueError(
            f"The checkpoint {checkpoint!r} holds weights a {type(model).__name__} of its config has no place for "
            f"({len(unused)}, e.g. {unused[:3]}); its config.json does not match its weights."
        )


def _load_local(model_class, directory: str, **config_overrides):
    config_path = os.path.join(directory, _CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"No {_CONFIG_FILE} in {directory!r}; is it a Hugging Face checkpoint directory?")
    # Read as the keras backend reads it first: transformers fails on valid JSON of another kind (`[]`) with a
    # TypeError, and names an invalid file in words of its own.
    check_json_types(config_path, read_config(directory), _CONFIG_TYPES)
    safetensors_path = os.path.join(directory, _SAFETENSORS_FILE)
    has_tf_weights = os.path.isfile(os.path.join(directory, _TF_H5_FILE)) or (
        os.path.isfile(safetensors_path) and _safetensors_format(safetensors_path) == "tf"
    )
    if has_tf_weights:
        # Weights of other shapes are skipped, and `_check_loading` refuses them outside the head.
        model, info = model_class.from_pretrained(directory, ignore_mismatched_sizes=True, output_loading_info=True,
                                                  **config_overrides)
        _check_loading(model, info, directory)
        return model
    if not os.path.isfile(safetensors_path):
        raise FileNotFoundError(
            f"No {_SAFETENSORS_FILE} or {_TF_H5_FILE} in {directory!r}; PyTorch .bin checkpoints need torch, so "
            "convert them to safetensors first."
        )
    config = transformers.AutoConfig.from_pretrained(directory, **config_overrides)
    model = model_class.from_config(config)
    model.build_in_name_scope()
    # A head of other shapes (a fine-tuned checkpoint given another `num_labels`) starts random, as the keras
    # backend's does; transformers' PyTorch loader would fail to reshape it, so its tensors are left out here.
    sizes = {convert_tf_weight_name_to_pt_weight_name(w.name, tf_weight_shape=w.shape)[0]: w.shape.num_elements()
             for w in model.weights}
    head_layers = _head_layers(model)
    with open_safetensors(safetensors_path) as archive:
        state = {key: archive.get_tensor(key) for key in archive.keys()}
    state = {key: tensor for key, tensor in state.items()
             if key.split(".")[0] not in head_layers or tensor.size == sizes.get(key, tensor.size)}
    # transformers' own PyTorch→TF name mapping: it transposes dense kernels and adds the `bert.` prefix that
    # base-model checkpoints (sentence-transformers among them) leave out.
    model, info = load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True, output_loading_info=True)
    _check_loading(model, info, directory)
    return model


def load_model(model_class, name: str, **config_overrides):
    """`model_class` (a transformers TF auto class) with the weights of `name` ("minilm", a directory or a hub id)."""
    checkpoint = resolve_checkpoint(name)
    with quiet_transformers():
        if os.path.isdir(checkpoint):
            return _load_local(model_class, checkpoint, **config_overrides)
        return _from_hub(model_class, checkpoint, **config_overrides)


def load_tokenizer(name: str):
    """The (fast) tokenizer of a checkpoint.

    Args:
        name: str. `"minilm"`, a checkpoint directory or a hub id.

    Returns:
        A `transformers.PreTrainedTokenizerFast`.

    Raises:
        FileNotFoundError: if a directory holds no tokenizer files.
        ValueError: for a hub id that cannot be fetched, a damaged `tokenizer.json`, a tokenizer's JSON file
            (`tokenizer_config.json`, ...) that is not a JSON object, or a key of `tokenizer_config.json` or
            `special_tokens_map.json` that holds a value of another type.

    Example:
    >>> load_tokenizer("minilm")(["a fine film"])["input_ids"]
    [[101, 1037, 2986, 2143, 102]]
    """
    checkpoint = resolve_checkpoint(name)
    with quiet_transformers():
        if not os.path.isdir(checkpoint):
            return _from_hub(transformers.AutoTokenizer, checkpoint)
        if not any(os.path.isfile(os.path.join(checkpoint, f)) for f in ("tokenizer.json", "vocab.txt")):
            raise FileNotFoundError(f"No tokenizer (tokenizer.json or vocab.txt) in {checkpoint!r}.")
        # transformers fails on valid JSON of another kind (`[]`) in a subscript, and on a value of another type
        # in `tokenizer_config.json` deep inside (a TypeError): each file is named here instead.
        read_tokenizer_config(checkpoint)
        read_special_tokens_map(checkpoint)
        for name in _TOKENIZER_JSON_FILES:
            path = os.path.join(checkpoint, name)
            if os.path.isfile(path):
                read_json_object(path)
        try:
            return transformers.AutoTokenizer.from_pretrained(checkpoint)
        except Exception:
            # `tokenizers` raises a bare Exception for a damaged tokenizer.json: that case is named in one sentence.
            json_path = os.path.join(checkpoint, "tokenizer.json")
            if os.path.isfile(json_path):
                read_tokenizer_json(json_path)
            raise


@contextlib.contextmanager
def _dtype_policy(precision: str):
    """tf_keras layers read the global policy when they are constructed; it is restored afterwards."""
    check_precision(precision)
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


def load_classifier(name: str, num_labels: int | None = None, label_names: list[str] | None = None,
                    precision: str = "float32"):
    """A `TF*ForSequenceClassification` (for BERT: `TFBertForSequenceClassification`) with pretrained encoder.

    Args:
        name: str. `"minilm"`, a checkpoint directory or a hub id.
        num_labels: int, default None (the checkpoint's own, 2 for a bare encoder). Classes of the head; a count
            other than a fine-tuned checkpoint's starts a new, random head.
        label_names: list of str, default None. Class names stored in the config (`id2label`), shown by predict.
        precision: str, default "float32". `"mixed_bfloat16"` computes in bfloat16 with float32 weights (the
            model's logits come out in bfloat16); it pays where the hardware has bfloat16 matmuls (AVX512_BF16
            or AMX CPUs, recent GPUs, TPUs) and is slower where it is emulated.

    Returns:
        A tf_keras model; called on `{"input_ids", "attention_mask"}` it returns an output with `.logits`
        `[batch, num_labels]`.

    Raises:
        FileNotFoundError: if a directory lacks `config.json` or weights.
        ValueError: if the checkpoint misses encoder weights (only the head may start random), a hub id
            cannot be fetched, or the precision is unknown.

    Example:
    >>> model = load_classifier("minilm", num_labels=2)
    >>> model.config.num_labels
    2
    """
    overrides = {}
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    if label_names is not None:
        check_label_names(label_names, num_labels)
        overrides["id2label"] = dict(enumerate(label_names))
        overrides["label2id"] = {label: i for i, label in enumerate(label_names)}
    with _dtype_policy(precision):
        return load_model(transformers.TFAutoModelForSequenceClassification, name, **overrides)


def set_seed(seed: int) -> None:
    """Seeds Python, numpy, TF and tf_keras, whose initializers and dropout layers (HF's) draw from its own seed."""
    tf_keras.utils.set_random_seed(seed)


def head_variables(model) -> list:
    """The trainable variables above the pretrained encoder: the pooler (if any) and the task head.

    Example:
    >>> [v.name.split("/", 1)[1] for v in head_variables(load_classifier("minilm", num_labels=2))]
    ['bert/pooler/dense/kernel:0', 'bert/pooler/dense/bias:0', 'classifier/kernel:0', 'classifier/bias:0']
    """
    base = getattr(model, model.base_model_prefix)
    pooler = getattr(base, "pooler", None)
    pooler_variables = {v.ref() for v in pooler.trainable_variables} if pooler is not None else set()
    encoder = {v.ref() for v in base.trainable_variables} - pooler_variables
    return [v for v in model.trainable_variables if v.ref() not in encoder]


def position_limit(model) -> int:
    """The longest input (in tokens) the model's position embeddings cover."""
    return int(model.config.max_position_embeddings)


def label_names(model) -> list[str]:
    """Class names by label id, from the model config (`LABEL_0`, ... when none were given)."""
    return [model.config.id2label[i] for i in range(model.config.num_labels)]
