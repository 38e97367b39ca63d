"""Text-classification data for BERT fine-tuning: TSV/CSV files or TFDS, tokenised into a padded `tf.data` pipeline.

The tokenizer is passed in (any callable with the Hugging Face tokenizer signature), so this module needs only
TensorFlow and numpy. Batches are padded per batch, not to `max_length`: SST-2's training phrases average 13
tokens, while a random batch of 32 has a longest member of about 40, and padding every batch to 64 would waste
four fifths of the compute. With `bucket_widths` the examples are also grouped by length and each batch is
padded to its bucket's width and filled to the full batch size, so a compiled step sees only
`len(bucket_widths)` shapes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

_DELIMITERS = {".tsv": "\t", ".csv": ","}


@dataclasses.dataclass(frozen=True)
class TextClassificationData:
    """Texts with their integer labels.

    Attributes:
        texts: list of str, one per example.
        labels: int64 array `[n]`.
        source: str. Where the examples came from, for error messages (`train.tsv`, `tfds:glue/sst2[train]`).
        label_names: list of str or None. Class names by id, when the source has them (TFDS `ClassLabel`).
        text_key: str or None. The column or feature the texts came from (None: not from a table or TFDS).
        label_key: str or None. The one the labels came from.
    """

    texts: list[str]
    labels: np.ndarray
    source: str
    label_names: list[str] | None = None
    text_key: str | None = None
    label_key: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def digest(self) -> str:
        """16 hex digits of a SHA-256 of the texts and labels in order: equal for the same examples wherever they
        were read from, and different for others (of the same count too).

        Example:
        >>> read_table("dev.tsv").digest() == read_table("copy-of-dev.tsv").digest()
        True
        """
        return hashlib.sha256(json.dumps([self.texts, self.labels.tolist()]).encode()).hexdigest()[:16]


def _column(header: list[str], key: str, path: str, argument: str) -> int:
    if key.isdigit():
        return int(key)
    if key not in header:
        raise ValueError(
            f"{path} has no {argument.split('_')[0]} column {key!r}; its columns are {header}. "
            f"Pass `{argument}=<column name or 0-based index>`."
        )
    return header.index(key)


def _check_max_examples(max_examples: int | None) -> None:
    # Not left to the slice or `take`: they read -1 as "all but the last one" and "all".
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"`max_examples` must be >= 1 (None keeps every example). Received: "
                         f"`max_examples={max_examples}`")


def read_table(path: str, text_key: str = "sentence", label_key: str = "label",
               max_examples: int | None = None) -> TextClassificationData:
    """Reads a TSV (`.tsv`, unquoted, as GLUE ships it) or CSV (`.csv`, quoted) file of texts and labels.

    Columns are found by header name; keys that are digits select 0-based columns instead, and then a first
    row whose label is not an integer is taken for a header and skipped.

    Args:
        path: str. The file.
        text_key: str, default "sentence". Text column name (or index).
        label_key: str, default "label". Integer label column name (or index).
        max_examples: int, default None (all). Keep only the first this many examples.

    Returns:
        A `TextClassificationData`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for `max_examples` < 1, an unknown extension, an empty file, a missing column, a short row, a
            label that is not an integer, bytes that are not UTF-8 or a field over the csv module's size limit (each
            naming the file and line).

    Example:
    >>> data = read_table("../shared/data/sst2/dev.tsv")
    >>> len(data), data.labels[:3]
    (872, array([1, 0, 1]))
    """
    _check_max_examples(max_examples)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No data file at {path!r}.")
    extension = os.path.splitext(path)[1].lower()
    if extension not in _DELIMITERS:
        raise ValueError(f"Data files must end in .tsv or .csv. Received: {path!r}")
    rows = _read_rows(path, _DELIMITERS[extension], csv.QUOTE_NONE if extension == ".tsv" else csv.QUOTE_MINIMAL)
    if not rows:
        raise ValueError(f"{path} is empty; it needs a header row and at least one example.")
    first_row = rows[0][1]
    if text_key.isdigit() and label_key.isdigit():
        first_label = first_row[int(label_key)] if int(label_key) < len(first_row) else ""
        has_header = not _is_int(first_label)
    else:
        has_header = True
    header = first_row if has_header else []
    text_col = _column(header, text_key, path, "text_key")
    label_col = _column(header, label_key, path, "label_key")
    body = rows[1:] if has_header else rows
    if max_examples is not None:
        body = body[:max_examples]
    if not body:
        raise ValueError(f"{path} has a header but no examples.")
    texts, labels = [], []
    for line, row in body:
        if max(text_col, label_col) >= len(row):
            raise ValueError(f"{path}:{line} has {len(row)} fields, fewer than the text and label columns need.")
        if not _is_int(row[label_col]):
            raise ValueError(f"{path}:{line}: the label {row[label_col]!r} is not an integer class id.")
        texts.append(row[text_col])
        labels.append(int(row[label_col]))
    return TextClassificationData(texts, np.asarray(labels, dtype=np.int64), os.path.basename(path),
                                  text_key=text_key, label_key=label_key)


def _read_rows(path: str, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
    """`(line, row)` for the non-empty rows of a UTF-8 file, `line` the 1-based physical line the row starts on
    (blank lines and quoted fields of several lines counted), so messages name the line an editor shows. A
    byte-order mark, as Excel writes, is dropped; any byte that is not UTF-8 and any field over the csv module's
    size limit is a ValueError naming the file and line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        byte = raw[error.start]
        raise ValueError(f"{path}:{line}: byte 0x{byte:02x} is not UTF-8; save the file as UTF-8.") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, line = [], 0
    try:
        for row in reader:
            if row:
                rows.append((line + 1, row))
            line = reader.line_num  # the record's last line: the next starts after it
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: {error} (an unbalanced quote makes one field of many lines; "
                         "check the quoting).") from None
    return rows


def _is_int(value: str) -> bool:
    return re.fullmatch(r"\s*-?\d+\s*", value) is not None


def load_tfds(name: str, split: str, text_key: str = "sentence", label_key: str = "label",
              tfds_data_dir: str | None = None, max_examples: int | None = None) -> TextClassificationData:
    """Reads one split of a TFDS text-classification dataset (e.g. `glue/sst2`) into memory.

    Args:
        name: str. TFDS name, e.g. "glue/sst2" or "imdb_reviews".
        split: str. TFDS split, e.g. "train", "validation", "train[:8000]".
        text_key: str, default "sentence". Text feature.
        label_key: str, default "label". Integer (ClassLabel) feature.
        tfds_data_dir: str, default None (TFDS's default). Where the prepared dataset lives.
        max_examples: int, default None (all). Keep only the first this many examples.

    Returns:
        A `TextClassificationData`, with `label_names` when the label is a `ClassLabel`.

    Raises:
        ValueError: if `max_examples` < 1, the dataset or split is unknown, or lacks the text or label feature.
        FileNotFoundError: if the dataset is not prepared and cannot be downloaded (offline: within seconds,
            through the language model's `tf_lm.data.sources.prepare_tfds`, leaving no partial files).

    Example:
    >>> data = load_tfds("glue/sst2", "validation")
    """
    _check_max_examples(max_examples)
    import tensorflow_datasets as tfds

    from tf_lm.data.sources import prepare_tfds, tfds_builder

    source = f"tfds:{name}[{split}]"
    builder = tfds_builder(source, name, tfds_data_dir)
    prepare_tfds(builder, name, hint="pass `tfds_data_dir=<a directory where it is already prepared>`, or read "
                 "local TSV/CSV files instead")
    info = builder.info
    try:
        dataset = builder.as_dataset(split=split)
    except Exception as error:  # TFDS raises its own zoo for bad split names.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Could not load {source}: {reason}") from None
    features = info.features
    for argument, key in (("text_key", text_key), ("label_key", label_key)):
        if key not in features:
            raise ValueError(f"{source} has no feature {key!r}; its features are {sorted(features)}. "
                             f"Pass `{argument}=<feature name>`.")
    label_feature = features[label_key]
    names = list(label_feature.names) if isinstance(label_feature, tfds.features.ClassLabel) else None
    texts, labels = [], []
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    for example in tfds.as_numpy(dataset):
        text = example[text_key]
        texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        labels.append(int(example[label_key]))
    if not texts:
        raise ValueError(f"{source} is empty.")
    return TextClassificationData(texts, np.asarray(labels, dtype=np.int64), source, names, text_key, label_key)


def check_labels(data: TextClassificationData, num_labels: int) -> None:
    """Raises ValueError naming the first example whose label is outside `[0, num_labels)`.

    Example:
    >>> check_labels(read_table("../shared/data/sst2/dev.tsv"), num_labels=2)
    """
    bad = np.flatnonzero((data.labels < 0) | (data.labels >= num_labels))
    if bad.size:
        raise ValueError(
            f"{data.source}: example {bad[0]} has label {data.labels[bad[0]]}, outside the {num_labels} classes "
            f"[0, {num_labels - 1}]; fix the data or pass a larger `num_labels`."
        )


def encode(tokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Token ids per text (with [CLS]/[SEP]), truncated to `max_length` and not padded.

    Args:
        tokenizer: a Hugging Face tokenizer (callable on a list of str).
        texts: list of str.
        max_length: int. Longest kept sequence, special tokens included.

    Returns:
        list of int32 arrays, one per text, each of length <= `max_length`.

    Example:
    >>> encode(tokenizer, ["a fine film"], max_length=4)
    [array([ 101, 1037, 2986,  102], dtype=int32)]
    """
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [np.asarray(row, dtype=np.int32) for row in ids]


def count_batches(token_ids: list[np.ndarray], batch_size: int, bucket_widths: tuple[int, ...] | None = None) -> int:
    """How many batches `make_dataset` yields per pass over `token_ids` (each bucket ends in a partial batch).

    Example:
    >>> count_batches([np.zeros(3)] * 5 + [np.zeros(9)] * 2, batch_size=4, bucket_widths=(4, 16))
    3
    """
    if bucket_widths is None:
        return math.ceil(len(token_ids) / batch_size)
    buckets = np.searchsorted(np.asarray(bucket_widths), [len(row) for row in token_ids], side="left")
    return int(sum(math.ceil(count / batch_size) for count in np.bincount(buckets) if count))


def make_dataset(token_ids: list[np.ndarray], labels: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, bucket_widths: tuple[int, ...] | None = None, pad_id: int = 0) -> tf.data.Dataset:
    """Batches of `(features, labels, weights)`, padded per batch, optionally bucketed by length.

    Args:
        token_ids: list of int32 arrays (from `encode`).
        labels: int array `[n]`.
        batch_size: int. Global batch size.
        shuffle: bool, default False. Reshuffle the examples every epoch (seeded by `seed`).
        seed: int, default 0.
        bucket_widths: tuple of int, default None. None: each batch is padded to its own longest sequence and
            the last batch may be short. Given (ascending, the last >= every length): examples are grouped by
            the smallest width that fits them, padded to that width, and every batch is filled to `batch_size`
            with rows of weight 0, so there are only `len(bucket_widths)` batch shapes.
        pad_id: int, default 0. Token id used for padding.

    Returns:
        A prefetched `tf.data.Dataset` of `({"input_ids": int32 [B, T], "attention_mask": int32 [B, T]},
        labels int32 [B], weights float32 [B])`. A weight is 1 / (real examples in the batch) for a real row
        and 0 for a filler row, so `sum(weights * per_example_loss)` is the batch mean even when a replica
        sees only part of the batch.

    Raises:
        ValueError: for an empty input, mismatched lengths, or bucket widths that are not ascending or do not
            cover the longest sequence.

    Example:
    >>> ds = make_dataset(encode(tokenizer, texts, 64), labels, batch_size=32, bucket_widths=(16, 32, 64))
    """
    import tensorflow as tf  # here, not above: finetune_bert reads and checks its data before TensorFlow loads

    if not token_ids or len(token_ids) != len(labels):
        raise ValueError(f"Need as many `token_ids` sequences as `labels`, at least one. Received: {len(token_ids)} "
                         f"sequences, {len(labels)} labels")
    lengths = np.asarray([len(row) for row in token_ids], dtype=np.int64)
    if bucket_widths is not None:
        widths = tuple(int(w) for w in bucket_widths)
        if list(widths) != sorted(set(widths)) or widths[-1] < lengths.max():
            raise ValueError(
                f"`bucket_widths` must ascend strictly and the last must cover the longest sequence "
                f"({lengths.max()}). Received: `bucket_widths={bucket_widths}`"
            )
    flat = tf.constant(np.concatenate(token_ids).astype(np.int32))  # [total tokens]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    dataset = tf.data.Dataset.from_tensor_slices((starts, lengths, np.asarray(labels, dtype=np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(token_ids), seed=seed, reshuffle_each_iteration=True)

    def to_example(start, length, label):
        ids = tf.slice(flat, [start], [length])  # [T_i]
        return {"input_ids": ids, "attention_mask": tf.ones_like(ids)}, label

    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    padding = ({"input_ids": pad_id, "attention_mask": 0}, 0)
    if bucket_widths is None:
        dataset = dataset.padded_batch(batch_size, padding_values=padding)
    else:
        # Boundaries are exclusive upper bounds, so width w holds lengths <= w; pad_to_bucket_boundary pads to
        # boundary - 1 = w. The bucket past the last boundary stays empty because the widths cover every length.
        dataset = dataset.bucket_by_sequence_length(
            lambda features, label: tf.shape(features["input_ids"])[0],
            bucket_boundaries=[w + 1 for w in widths],
            bucket_batch_sizes=[batch_size] * (len(widths) + 1),
            padding_values=padding,
            pad_to_bucket_boundary=True,
        )

    def add_weights(features, label):
        real = tf.shape(label)[0]
        weights = tf.fill([real], 1.0 / tf.cast(real, tf.float32))  # [b]
        if bucket_widths is None:
            return features, label, weights
        fill = batch_size - real
        features = {
            "input_ids": tf.pad(features["input_ids"], [[0, fill], [0, 0]], constant_values=pad_id),  # [B, T]
            "attention_mask": tf.pad(features["attention_mask"], [[0, fill], [0, 0]]),  # [B, T]
        }
        return features, tf.pad(label, [[0, fill]]), tf.pad(weights, [[0, fill]])

    return dataset.map(add_weights, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
