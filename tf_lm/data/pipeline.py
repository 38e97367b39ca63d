"""`lm_datasets`: a token store becomes `tf.data` pipelines of (inputs, targets) windows.

Training is an infinite stream of windows of `block_size + 1` ids, sampled as nanoGPT samples them: every window
starts at an independent, uniformly random position of the train split (all shards as one sequence). Row `r` of
the global batch at step `s` (global window index `s * batch_size + r`) starts at a stateless draw from
`(seed, s)`, so the batch at global step `s` is a pure function of `(seed, s)`, and `start_step=s` starts there in
O(1): after a SIGKILL a restarted run sees exactly the batches the uninterrupted run would have seen. Input
pipelines split each global batch into disjoint row ranges, so any number of pipelines and replicas trains on the
same windows as one device.

Validation is finite: contiguous, non-overlapping windows that cover the split once (only the final partial window
is dropped).

Windows are read from the store's shards by position (`TokenStore.windows`, through `tf.numpy_function`), so
memory does not grow with the corpus; the pipeline still runs far ahead of training. Because the reads are Python,
drop an iterator before the interpreter shuts down (a function's local, not a module global): a prefetch thread
still reading while Python finalizes can never take the GIL again, and TensorFlow waits for it forever. A read
that finds the store damaged fails the iteration; `damaged_store_errors` gives that failure back its own error.
"""

from __future__ import annotations

import contextlib
import re
import traceback

import tensorflow as tf

from tf_lm.data.store import DamagedStoreError, TokenStore


def _windows_to_pairs(store: TokenStore, split: str, block_size: int):
    """Maps a batch of window starts [b] to (inputs, targets), each int32 [b, block_size]."""

    def to_pairs(starts):
        windows = tf.numpy_function(lambda s: store.windows(split, s, block_size + 1), [starts], tf.int32,
                                    stateful=False)  # [b, T+1]
        windows.set_shape([None, block_size + 1])
        return windows[:, :-1], windows[:, 1:]  # targets are the inputs shifted by one token

    return to_pairs


@contextlib.contextmanager
def damaged_store_errors():
    """Inside the block, iterating a pipeline over a damaged store raises the store's `DamagedStoreError`.

    TensorFlow hands an exception raised inside `tf.numpy_function` on as an `InvalidArgumentError` whose message
    adds the failing op and the Python traceback; the store's own one-line message is taken back out of it.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        found = re.search(rf"\b{DamagedStoreError.__name__}: ([^\n]*)", error.message)
        if found is None:
            raise
        # The finished frames in TensorFlow's traceback hold the pipeline's iterator, whose other reads are still in
        # flight. Kept alive by the exception chain until the interpreter exits, the iterator would be destroyed
        # while Python finalizes, waiting forever for reads that can no longer take the GIL: drop it now.
        traceback.clear_frames(error.__traceback__)
        raise DamagedStoreError(found.group(1)) from None


def check_block_size(store: TokenStore, block_size: int) -> None:
    """Raises ValueError unless both splits of `store` hold a window of `block_size` inputs and its targets; a run
    checks it before writing anything."""
    for split in ("train", "validation"):
        _check_length(store, split, block_size)


def _check_length(store: TokenStore, split: str, block_size: int) -> None:
    num_ids = store.num_tokens(split)
    if num_ids < block_size + 1:
        # A store prepared for one evaluation lives in a temporary directory: its source is what the user named.
        source = store.manifest["request"].get("source")
        raise ValueError(
            f"The {split} split of token store {store.directory!r}{f' (from {source!r})' if source else ''} has "
            f"{num_ids} tokens, fewer than block_size+1={block_size + 1} (a window and its targets); use a longer "
            "corpus, a model or block_size of a shorter context, or a different `validation_fraction`."
        )


def _check_sizes(caller: str, **sizes) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{caller} needs `{name}` to be an integer >= 1. Received: `{name}={value!r}`")


def _pipeline_shape(batch_size: int, input_context) -> tuple[int, int, int]:
    if input_context is None:
        return 1, 0, batch_size
    return (input_context.num_input_pipelines, input_context.input_pipeline_id,
            input_context.get_per_replica_batch_size(batch_size))


def lm_datasets(store: str | TokenStore, block_size: int, batch_size: int, *, seed: int = 0, start_step: int = 0,
                input_context: tf.distribute.InputContext | None = None) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Train and validation datasets of `(inputs, targets)` windows for next-token prediction.

    Args:
        store: `TokenStore`, or the directory of one (see `prepare_store`).
        block_size: int. Tokens per example (the model's context length).
        batch_size: int. The global batch; with `input_context`, each input pipeline yields
            `input_context.get_per_replica_batch_size(batch_size)` examples per batch.
        seed: int, default 0. Seeds the training windows' start positions.
        start_step: int, default 0. The global step of the first training batch; earlier batches are skipped
            without being computed, so resuming at step `s` continues the stream exactly.
        input_context: `tf.distribute.InputContext` or None. For
            `strategy.distribute_datasets_from_function`: this pipeline reads its own shard
            (`input_pipeline_id` of `num_input_pipelines`): its own rows of every global batch, disjoint from the
            other pipelines' rows, and its own validation windows.

    Returns:
        `(train, validation)`. `train` is infinite and yields int32 `([b, block_size], [b, block_size])` with
        targets = inputs shifted by one; every batch has exactly b rows, each a window at an independent uniformly
        random start. `validation` is `contiguous_windows(store, "validation", ...)`.

    Raises:
        ValueError: on non-positive sizes, a negative `start_step`, a split shorter than `block_size + 1` tokens.
        FileNotFoundError: if `store` is a directory without a finished store.

    Example:
    >>> store = prepare_store("builtin:pydoc", "runs/stores/pydoc-char")  # doctest: +SKIP
    >>> train, validation = lm_datasets(store, block_size=64, batch_size=8)  # doctest: +SKIP
    >>> inputs, targets = next(iter(train))  # int32 [8, 64] each  # doctest: +SKIP
    """
    _check_sizes("lm_datasets", block_size=block_size, batch_size=batch_size)
    if not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"lm_datasets needs start_step to be an integer >= 0. Received: start_step={start_step!r}")
    store = store if isinstance(store, TokenStore) else TokenStore(store)
    check_block_size(store, block_size)
    num_pipelines, pipeline_id, batch = _pipeline_shape(batch_size, input_context)
    return (
        _train_dataset(store, block_size, batch, batch_size, seed, start_step, num_pipelines, pipeline_id),
        contiguous_windows(store, "validation", block_size, batch_size, input_context=input_context),
    )


def contiguous_windows(store: str | TokenStore, split: str, block_size: int, batch_size: int, *,
                       input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Finite `(inputs, targets)` windows of `split`: contiguous, non-overlapping, covering the split once.

    Only the final partial window is dropped; the last batch may be smaller. With `input_context`, pipeline `p`
    of `P` takes every P-th window from the p-th, at the per-replica batch.

    Raises:
        ValueError: on non-positive sizes, an unknown split or one shorter than `block_size + 1` tokens.
    """
    _check_sizes("contiguous_windows", block_size=block_size, batch_size=batch_size)
    store = store if isinstance(store, TokenStore) else TokenStore(store)
    _check_length(store, split, block_size)
    num_pipelines, pipeline_id, batch = _pipeline_shape(batch_size, input_context)
    num_windows = (store.num_tokens(split) - 1) // block_size  # only the final partial window is dropped
    starts = tf.data.Dataset.range(pipeline_id, num_windows, num_pipelines).map(lambda k: k * block_size)
    dataset = (
        starts.batch(batch)
        .map(_windows_to_pairs(store, split, block_size), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset.with_options(_options(num_pipelines > 1))


def _options(sharded: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # The windows are cut by position, not read from files by tf.data, so tf.distribute cannot shard by file:
    # shard batches (DATA) when it must shard, or not at all when this function already took its own shard.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if sharded else tf.data.experimental.AutoShardPolicy.DATA
    )
    return options


def _train_dataset(store, block_size, batch, global_batch, seed, start_step, num_pipelines, pipeline_id):
    # Every position whose window of block_size + 1 ids fits in the split, the last id included.
    num_starts = store.num_tokens("train") - block_size
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

    dataset = (
        tf.data.Dataset.counter(start_step)  # global steps, so starting at start_step needs no iteration
        .map(step_windows)
        .unbatch()
        .map(_windows_to_pairs(store, "train", block_size), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset.with_options(_options(num_pipelines > 1))
