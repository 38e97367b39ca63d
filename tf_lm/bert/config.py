"""`BertConfig`: the shape of a BERT classifier, in the field names of Hugging Face's `config.json`; and
`FinetuneConfig`: how to fine-tune it.

The language model speaks GPT-2's names (`LMConfig`); this config speaks BERT's, so a checkpoint's `config.json`
maps onto it key by key and an export writes it back unchanged. Neither imports TensorFlow, so finetune_bert
refuses bad flags before it loads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# float16 would also need loss scaling in the train step; bfloat16 has float32's range and needs none.
PRECISIONS = ("float32", "mixed_bfloat16")
# BERT's "gelu" is the exact erf form; "gelu_new" (GPT-2's) the tanh approximation.
ACTIVATIONS = ("gelu", "gelu_new")


def is_finite_number(value) -> bool:
    """Whether a JSON value is a finite int or float (not a bool, which Python counts as an int: a `true` is no
    rate)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _names_each_class_once(names) -> bool:
    # transformers' `label2id` maps each name back to its id, so an empty or repeated name has no single id.
    return all(isinstance(name, str) and name for name in names) and len(set(names)) == len(names)


def check_label_names(label_names, num_labels: int | None) -> None:
    """Raises ValueError unless `label_names` names each of `num_labels` classes (any number if None) once."""
    if num_labels is not None and len(label_names) != num_labels:
        raise ValueError(f"{len(label_names)} label names for {num_labels} labels. "
                         f"Received: `label_names={list(label_names)}`")
    if not _names_each_class_once(label_names):
        raise ValueError(f"Label names must be distinct, non-empty strings. Received: "
                         f"`label_names={list(label_names)}`")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape, regularisation and classes of a `BertClassifier`.

    Args:
        vocab_size: int, default 30522. WordPiece vocabulary size.
        hidden_size: int, default 768. Width of the encoder.
        num_hidden_layers: int, default 12. Encoder blocks.
        num_attention_heads: int, default 12. Must divide `hidden_size`.
        intermediate_size: int, default 3072. Width of each block's MLP.
        hidden_act: "gelu" (exact, default) or "gelu_new" (tanh approximation).
        hidden_dropout_prob: float in [0, 1), default 0.1. Dropout on embeddings and residual branches, and on the
            classifier's input unless `classifier_dropout` says otherwise.
        attention_probs_dropout_prob: float, default 0.1. Must equal `hidden_dropout_prob`: the shared attention
            layer has one dropout rate for its weights and its output.
        max_position_embeddings: int, default 512. Longest input in tokens.
        type_vocab_size: int, default 2. Segment ids (sentence A/B).
        layer_norm_eps: float, default 1e-12.
        initializer_range: float, default 0.02. Std of the normal initializer of new weights.
        pad_token_id: int, default 0.
        classifier_dropout: float in [0, 1) or None, default None (`hidden_dropout_prob`). Dropout on the
            classifier's input, as transformers' `classifier_dropout`.
        num_labels: int >= 2, default 2. Classes of the head.
        label_names: tuple of str or None. Class names by id (written as `id2label`).

    Raises:
        ValueError: if a field is out of range.

    Example:
    >>> BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536).num_attention_heads
    12
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    num_labels: int = 2
    label_names: tuple[str, ...] | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be an integer >= 1. Received: `{name}={value!r}`")
        # Checked for type first: a string from a damaged config.json would fail the range tests with a TypeError.
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "initializer_range",
                     "classifier_dropout"):
            value = getattr(self, name)
            if not is_finite_number(value) and not (name == "classifier_dropout" and value is None):
                raise ValueError(f"BertConfig.{name} must be a finite number. Received: `{name}={value!r}`")
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool) or self.pad_token_id < 0:
            raise ValueError(f"BertConfig.pad_token_id must be an integer >= 0. Received: "
                             f"`pad_token_id={self.pad_token_id!r}`")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size must be divisible by `num_attention_heads`. Received: "
                             f"`hidden_size={self.hidden_size}`, `num_attention_heads={self.num_attention_heads}`")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {list(ACTIVATIONS)}. "
                             f"Received: `hidden_act={self.hidden_act!r}`")
        if not 0.0 <= self.hidden_dropout_prob < 1.0:
            raise ValueError(f"BertConfig.hidden_dropout_prob must be in [0, 1). "
                             f"Received: `hidden_dropout_prob={self.hidden_dropout_prob}`")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"BertConfig.classifier_dropout must be None or in [0, 1). "
                             f"Received: `classifier_dropout={self.classifier_dropout}`")
        if self.attention_probs_dropout_prob != self.hidden_dropout_prob:
            raise ValueError(
                "BertConfig.attention_probs_dropout_prob must equal `hidden_dropout_prob` (one rate per attention "
                f"layer). Received: `attention_probs_dropout_prob={self.attention_probs_dropout_prob}`, "
                f"`hidden_dropout_prob={self.hidden_dropout_prob}`"
            )
        if not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool) or self.num_labels < 2:
            raise ValueError(f"A classifier needs `num_labels` >= 2. Received: `num_labels={self.num_labels!r}`")
        if self.label_names is not None:
            check_label_names(self.label_names, self.num_labels)

    @property
    def classifier_dropout_rate(self) -> float:
        """The dropout rate on the classifier's input: `classifier_dropout`, else `hidden_dropout_prob`."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    @property
    def labels(self) -> list[str]:
        """Class names by id: `label_names`, or `LABEL_0`, `LABEL_1`, ... as transformers names them."""
        return list(self.label_names) if self.label_names else [f"LABEL_{i}" for i in range(self.num_labels)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        """From `to_dict`'s output (as stored in a `.keras` file)."""
        values = dict(values)
        if values.get("label_names") is not None:
            values["label_names"] = tuple(values["label_names"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf(cls, hf_config: dict[str, Any], source: str = "config.json", **overrides: Any) -> BertConfig:
        """From a Hugging Face BERT `config.json` dict; keys this model does not use are ignored.

        `num_labels` and `label_names` come from `id2label` when the checkpoint has a classifier, and
        `overrides` (e.g. `num_labels=3`) replace any field. As in transformers, a `num_labels` override keeps the
        checkpoint's class names when it equals their count, and drops them otherwise.

        Args:
            hf_config: dict, the contents of a `config.json`.
            source: str, default "config.json". The file `hf_config` was read from, named in its errors.
            **overrides: `BertConfig` fields that replace the file's.

        Raises:
            ValueError: for a `model_type` other than bert, an unsupported position embedding type, or a field of
                the file out of range or of the wrong type (a damaged file), each naming `source`.
        """
        try:
            values = cls._values_of_hf(hf_config)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        if "num_labels" in overrides and overrides["num_labels"] != values.get("num_labels"):
            values.pop("label_names", None)  # other classes than the checkpoint's: their names do not apply
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as error:  # without overrides, the classes too are the file's (its `id2label`)
            if overrides:
                raise
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def _values_of_hf(cls, hf_config: dict[str, Any]) -> dict[str, Any]:
        """`from_hf`'s fields of `hf_config` before overrides, each checked (the classes' fields only for type)."""
        if hf_config.get("model_type", "bert") != "bert":
            raise ValueError(f"Only BERT checkpoints load into BertClassifier. Received: "
                             f"model_type={hf_config.get('model_type')!r}")
        if hf_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("Only absolute position embeddings are supported. Received: "
                             f"position_embedding_type={hf_config['position_embedding_type']!r}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"num_labels", "label_names"}
        values = {key: hf_config[key] for key in fields if hf_config.get(key) is not None}
        cls(**values)  # the encoder's fields, checked here, where a failure is the file's
        id2label = hf_config.get("id2label")
        architectures = hf_config.get("architectures") or []
        if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
            raise ValueError(f"architectures must be a list of class names. Received: architectures={architectures!r}")
        if id2label and any(name.endswith("ForSequenceClassification") for name in architectures):
            # JSON keys are strings; a dict built in Python may use ints.
            names = (None if not isinstance(id2label, dict) else
                     [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))])
            if names is None or not _names_each_class_once(names):
                raise ValueError("id2label must map the class ids 0, 1, ... to distinct names. Received: "
                                 f"id2label={id2label!r}")
            values["num_labels"] = len(names)
            if names != [f"LABEL_{i}" for i in range(len(names))]:
                values["label_names"] = tuple(names)
        return values

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.BertConfig` / `TFBertForSequenceClassification` read."""
        values = self.to_dict()
        del values["label_names"]
        labels = self.labels
        return {
            "architectures": ["BertForSequenceClassification"], "model_type": "bert",
            "position_embedding_type": "absolute", **values,
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
        }


def check_precision(precision: str) -> None:
    """Raises ValueError unless `precision` is one of `PRECISIONS` (the fine-tuning precisions)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown `precision={precision!r}` for fine-tuning; choose one of {list(PRECISIONS)}.")


BACKENDS = ("keras", "hf")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune.

    Attributes:
        max_length: int, default 128. Longest sequence in tokens ([CLS] and [SEP] included); longer are cut.
        batch_size: int, default 32. Global batch size (split across replicas).
        learning_rate: float, default 5e-5. Peak AdamW learning rate.
        head_lr_multiplier: float, default 1.0. The pooler and classifier (`hub.head_variables`) train at this
            multiple of `learning_rate`, with their own AdamW on the same schedule: the classifier starts from
            random weights and the pooler was not trained for the task, so in a short fine-tune a larger step
            lets them keep up with the pretrained encoder.
        epochs: int, default 3. Passes over the training data (evaluated after each).
        max_steps: int or None, default None. If set, train exactly this many steps instead of `epochs`
            passes (still evaluating after every pass and at the end).
        warmup_fraction: float, default 0.1. Share of the steps spent warming the learning rate up from 0.
        weight_decay: float, default 0.01. AdamW decoupled weight decay (not on LayerNorm and biases).
        num_buckets: int, default 8. Length buckets, widths spread evenly up to `max_length`; 0 pads each
            batch to its own longest sequence instead (every batch a new shape). Evaluation batches always, and
            training batches without packing.
        packing: bool or None, default None (on for the keras backend without `jit_compile`). Train on random batches
            whose sequences the model packs into rows as wide as each batch's longest, each attending only within
            itself (same logits, fewer padded tokens than buckets). The hf backend cannot: transformers' BERT takes
            only a 2-D attention mask; nor can XLA, since a batch's row count depends on its lengths.
        jit_compile: bool, default False. XLA-compile the train and eval steps. Without it the keras backend's
            optimizer update is still XLA-compiled on its own (one fused pass over weights and AdamW slots).
        precision: str, default "float32". Or "mixed_bfloat16": bfloat16 compute, float32 weights and loss;
            it pays where the hardware has bfloat16 matmuls (AVX512_BF16 or AMX CPUs, recent GPUs, TPUs).
        backend: str, default "keras". `keras` (`BertClassifier`, Keras 3) or `hf` (transformers'
            `TFBertForSequenceClassification`, tf_keras).
        seed: int, default 0. Seeds the shuffling, the new head's initial weights and dropout, so a rerun
            repeats a run.
    """

    max_length: int = 128
    batch_size: int = 32
    learning_rate: float = 5e-5
    head_lr_multiplier: float = 1.0
    epochs: int = 3
    max_steps: int | None = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    num_buckets: int = 8
    jit_compile: bool = False
    precision: str = "float32"
    seed: int = 0
    backend: str = "keras"
    packing: bool | None = None

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: `{name}={getattr(self, name)}`")
        if self.max_length < 2:
            raise ValueError(f"`max_length` must leave room for [CLS] and [SEP]. Received: "
                             f"`max_length={self.max_length}`")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1 or None. Received: `max_steps={self.max_steps}`")
        # NaN fails every comparison, so each test of a float is written to refuse it.
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"`warmup_fraction` must lie in [0, 1). Received: "
                             f"`warmup_fraction={self.warmup_fraction}`")
        for name in ("learning_rate", "head_lr_multiplier"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"`{name}` must be finite and > 0. Received: `{name}={getattr(self, name)}`")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"`weight_decay` must be finite and >= 0. Received: `weight_decay={self.weight_decay}`")
        check_precision(self.precision)
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown `backend={self.backend!r}`; choose one of {list(BACKENDS)}.")
        if not 0 <= self.num_buckets <= self.max_length:
            raise ValueError(f"`num_buckets` must lie in [0, `max_length`]. Received: "
                             f"`num_buckets={self.num_buckets}`, `max_length={self.max_length}`")
        if self.packing and self.backend == "hf":
            raise ValueError("`packing` needs `backend='keras'`: transformers' BERT takes only a 2-D attention mask, "
                             "so it cannot keep packed sequences apart. Received: `packing=True`, `backend='hf'`")
        if self.packing and self.jit_compile:
            raise ValueError("`packing` cannot be XLA-compiled: a batch's row count depends on its lengths. Pass "
                             "`packing=False` or `jit_compile=False`. Received: `packing=True`, `jit_compile=True`")

    @property
    def packs(self) -> bool:
        """Whether training batches are packed: `packing`, or by default with the keras backend without XLA."""
        return self.backend == "keras" and not self.jit_compile if self.packing is None else self.packing

    @property
    def train_bucket_widths(self) -> tuple[int, ...] | None:
        """The training batches' `bucket_widths`: None when packing (random batches pack tighter than buckets)."""
        return None if self.packs else self.bucket_widths

    @property
    def bucket_widths(self) -> tuple[int, ...] | None:
        """Ascending pad widths, the last `max_length`; None when `num_buckets` is 0.

        Example:
        >>> FinetuneConfig(max_length=64, num_buckets=4).bucket_widths
        (16, 32, 48, 64)
        """
        if self.num_buckets == 0:
            return None
        return tuple(sorted({math.ceil(self.max_length * (i + 1) / self.num_buckets) for i in range(self.num_buckets)}))
