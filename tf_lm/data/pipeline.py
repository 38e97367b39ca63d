"""`lm_datasets`: token-id streams become `tf.data` pipelines of (inputs, targets) windows.

Training is an infinite stream of windows of `block_size + 1` ids, sampled as nanoGPT samples them: every window
starts at an independent, uniformly random position of the train split. Row `r` of the global batch at step `s`
(global window index `s * batch_size + r`) starts at a stateless draw from `(seed, s)`, so the batch at global step
`s` is a pure function of `(seed, s)`, and `start_step=s` starts there in O(1): after a SIGKILL a restarted run sees
exactly the batches the uninterrupted run would have seen. Input pipelines split each global batch into disjoint
row ranges, so any number of pipelines and replicas trains on the same windows as one device.

Validation is finite: contiguous, non-overlapping windows that cover the split once (only the final partial window
is dropped).

Windows are cut by one `tf.gather` from a constant id tensor, so the pipeline runs far ahead of training.
"""

from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np
import tensorflow as tf

from tf_lm.data.sources import Corpus, read_source
from tf_lm.fileio import atomic_write

SPLITS = ("train", "validation")


def _encode(tokenizer, text: str) -> np.ndarray:
    # CharTokenizer can hand back numpy directly; any other tokenizer goes through its list interface.
    encode_array = getattr(tokenizer, "encode_array", None)
    ids = encode_array(text) if encode_array is not None else tokenizer.encode(text)
    return np.asarray(ids, dtype=np.int32)  # [T]


def _cache_path(cache_dir: str, corpus: Corpus, split: str, text: str, tokenizer) -> str:
    # Keyed by the text itself (not just the source string), so an edited file never serves stale ids.
    key = hashlib.sha256()
    for part in (corpus.name, split, tokenizer.fingerprint):
        key.update(part.encode("utf-8") + b"\0")
    key.update(text.encode("utf-8", "surrogatepass"))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus.name).strip("_")[:60]
    return os.path.join(cache_dir, f"{slug}.{split}.{key.hexdigest()[:20]}.npy")


def encode_corpus(corpus: Corpus, tokenizer, cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """Tokenises both splits of `corpus`, reading and writing the id cache in `cache_dir` when given.

    Args:
        corpus: `Corpus`.
        tokenizer: any tokenizer of `tf_lm.data.tokenizers`.
        cache_dir: str or None. Directory for `.npy` id files keyed by (source, split, text, tokenizer
            fingerprint). Files are written to a temporary name and renamed, so a killed run leaves none
            half-written.

    Returns:
        {"train": int32 [T_train], "validation": int32 [T_val]}.

    Raises:
        ValueError: whatever the tokenizer raises (e.g. a character outside a CharTokenizer's vocabulary).

    Example:
    >>> ids = encode_corpus(read_source(), tokenizer, cache_dir="runs/ids")  # doctest: +SKIP
    """
    ids = {}
    for split in SPLITS:
        text = getattr(corpus, split)
        path = None if cache_dir is None else _cache_path(cache_dir, corpus, split, text, tokenizer)
        if path is not None and os.path.isfile(path):
            ids[split] = np.load(path)
            continue
        ids[split] = _encode(tokenizer, text)
        if path is not None:
            buffer = io.BytesIO()
            np.save(buffer, ids[split])
            atomic_write(path, buffer.getvalue())
    return ids


def _windows_to_pairs(ids: tf.Tensor, block_size: int):
    """Maps a batch of window starts [b] to (inputs, targets), each int32 [b, block_size]."""

    def to_pairs(starts):
        windows = tf.gather(ids, starts[:, None] + tf.range(block_size + 1, dtype=tf.int64)[None, :])  # [b, T+1]
        return windows[:, :-1], windows[:, 1:]  # targets are the inputs shifted by one token

    return to_pairs


def _check_length(corpus: Corpus, split: str, num_ids: int, block_size: int) -> None:
    if num_ids < block_size + 1:
        raise ValueError(
            f"The {split} split of {corpus.name!r} has {num_ids} tokens, fewer than block_size+1={block_size + 1}; "
            f"use a longer corpus, a smaller block_size or a different validation_fraction."
        )


def lm_datasets(source: str | Corpus, tokenizer, block_size: int, batch_size: int, *, seed: int = 0,
                start_step: int = 0, cache_dir: str | None = None,
                input_context: tf.distribute.InputContext | None = None,
                **read_source_kwargs) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Train and validation datasets of `(inputs, targets)` windows for next-token prediction.

    Args:
        source: str or `Corpus`. A source string for `read_source` ("builtin:pydoc", "text:<glob>",
            "tfds:<name>") or an already read `Corpus`.
        tokenizer: a tokenizer from `tf_lm.data.tokenizers` (anything with `encode` and `fingerprint`).
        block_size: int. Tokens per example (the model's context length).
        batch_size: int. The global batch; with `input_context`, each input pipeline yields
            `input_context.get_per_replica_batch_size(batch_size)` examples per batch.
        seed: int, default 0. Seeds the training windows' start positions.
        start_step: int, default 0. The global step of the first training batch; earlier batches are skipped
            without being computed, so resuming at step `s` continues the stream exactly.
        cache_dir: str or None. Where the token ids are cached (see `encode_corpus`); None tokenises every call.
        input_context: `tf.distribute.InputContext` or None. For
            `strategy.distribute_datasets_from_function`: this pipeline reads its own shard
            (`input_pipeline_id` of `num_input_pipelines`): its own rows of every global batch, disjoint from the
            other pipelines' rows, and its own validation windows.
        **read_source_kwargs: passed to `read_source` (e.g. `validation_fraction`, `tfds_data_dir`); only with a
            source string.

    Returns:
        `(train, validation)`. `train` is infinite and yields int32 `([b, block_size], [b, block_size])` with
        targets = inputs shifted by one; every batch has exactly b rows, each a window at an independent uniformly
        random start. `validation` is finite: its windows are contiguous and non-overlapping and cover the split
        once; the last batch may be smaller.

    Raises:
        ValueError: on non-positive sizes, a negative `start_step`, `read_source_kwargs` with a `Corpus`, a split
            shorter than `block_size + 1` tokens; and whatever `read_source` or the tokenizer raise.

    Example:
    >>> tok = CharTokenizer.from_text(read_source().train, unknown_token="?")  # doctest: +SKIP
    >>> train, validation = lm_datasets("builtin:pydoc", tok, block_size=64, batch_size=8)  # doctest: +SKIP
    >>> inputs, targets = next(iter(train))  # int32 [8, 64] each  # doctest: +SKIP
    """
    for name, value in (("block_size", block_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"lm_datasets needs {name} to be an integer >= 1. Received: {name}={value!r}")
    if not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"lm_datasets needs start_step to be an integer >= 0. Received: start_step={start_step!r}")
    if isinstance(source, Corpus):
        if read_source_kwargs:
            raise ValueError(
                f"read_source options {sorted(read_source_kwargs)} only apply to a source string; the Corpus "
                f"{source.name!r} is already read, so drop them."
            )
        corpus = source
    else:
        corpus = read_source(source, **read_source_kwargs)

    ids = encode_corpus(corpus, tokenizer, cache_dir)
    for split in SPLITS:
        _check_length(corpus, split, len(ids[split]), block_size)

    num_pipelines, pipeline_id, batch = 1, 0, batch_size
    if input_context is not None:
        num_pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        batch = input_context.get_per_replica_batch_size(batch_size)
    return (
        _train_dataset(ids["train"], block_size, batch, batch_size, seed, start_step, num_pipelines, pipeline_id),
        _validation_dataset(ids["validation"], block_size, batch, num_pipelines, pipeline_id),
    )


def _options(sharded: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # The data are in memory, so tf.distribute cannot shard by file: shard batches (DATA) when it must shard, or
    # not at all when this function already took its own shard.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if sharded else tf.data.experimental.AutoShardPolicy.DATA
    )
    return options


def _train_dataset(ids: np.ndarray, block_size, batch, global_batch, seed, start_step, num_pipelines, pipeline_id):
    # Every position whose window of block_size + 1 ids fits in the split, the last id included.
    num_starts = len(ids) - block_size
    # A pipeline feeds every replica of its worker, so one global step takes global_batch / num_pipelines of the
    # global batch's rows: several per-replica batches under MirroredStrategy, one under one-device-per-worker
    # MultiWorker. Pipeline p owns rows [p * windows_per_step, (p + 1) * windows_per_step).
    windows_per_step = global_batch // num_pipelines
    first_row = pipeline_id * windows_per_step
    seed_t = tf.constant(seed, tf.int64)

    def step_windows(step):
        # The whole global batch is drawn from (seed, step) and sliced, so row r's start is the same however many
        # pipelines and replicas share the batch.
        starts = tf.random.stateless_uniform([global_batch], tf.stack([seed_t, step]), minval=0, maxval=num_starts,
                                             dtype=tf.int64)  # [global_batch]
        mine = starts[first_row:first_row + windows_per_step]  # [windows_per_step]
        return tf.reshape(mine, [-1, batch])  # [windows_per_step / batch, batch]: this step's per-replica batches

    ids_t = tf.constant(ids)  # [T]; captured by the map, so the whole stream lives in memory once
    dataset = (
        tf.data.Dataset.counter(start_step)  # global steps, so starting at start_step needs no iteration
        .map(step_windows)
        .unbatch()
        .map(_windows_to_pairs(ids_t, block_size), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset.with_options(_options(num_pipelines > 1))


def _validation_dataset(ids: np.ndarray, block_size, batch, num_pipelines, pipeline_id):
    num_windows = (len(ids) - 1) // block_size  # only the final partial window is dropped
    starts = np.arange(num_windows, dtype=np.int64)[pipeline_id::num_pipelines] * block_size  # [n]
    ids_t = tf.constant(ids)  # [T]
    dataset = (
        tf.data.Dataset.from_tensor_slices(starts)
        .batch(batch)
        .map(_windows_to_pairs(ids_t, block_size), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset.with_options(_options(num_pipelines > 1))
