"""Evaluates a trained model directory: loss, perplexity and bits per token (per character for char models).

    python -m experiments.evaluate_lm --model_dir=runs/shakespeare \\
        --dataset=text:../shared/data/tinyshakespeare/input.txt [--split=validation]
    python -m experiments.evaluate_lm --model_dir=runs/corpus --dataset=store:stores/corpus
    python -m experiments.evaluate_lm --model_dir=runs/shakespeare --score="To be, or not to be"

A `store:` dataset must hold the ids of the model's tokenizer; any other source is first prepared with that
tokenizer into a temporary store.

`--score` prints log P(W) = Σ_i log P(w_i | w_1..w_{i-1}) and each token's log-probability.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
from absl import flags, logging

from experiments.flags import (
    RUN_CONFIG,
    dataset_path,
    define_data_flags,
    define_trained_model_flag,
    flag_group,
    one_line_errors,
    read_run_config,
    run_script,
    source_options,
)
from tf_lm import artifacts
from tf_lm.data import TokenStore, prepare_store
from tf_lm.data.sources import STORE_SCHEME
from tf_lm.data.store import MANIFEST
from tf_lm.fileio import gfile

FLAGS = flags.FLAGS


def evaluate_split(model, tokenizer, store: TokenStore, split: str, batch_size: int = 16,
                   max_batches: int | None = None) -> dict:
    """Mean next-token loss of `model` over `split` of `store`, in contiguous non-overlapping windows.

    Args:
        model: a `TransformerLM`.
        tokenizer: its tokenizer.
        store: `TokenStore` holding ids of `tokenizer`.
        split: "validation" or "train".
        batch_size: int, default 16. Windows per batch.
        max_batches: int or None. Stop after this many batches (None: the whole split).

    Returns:
        dict with `loss` (nats per token), `perplexity`, `bits` (per token) and `tokens` (how many were scored).

    Raises:
        ValueError: for an unknown split, a split shorter than one window, a store of another tokenizer, or
            `max_batches` < 1; `DamagedStoreError` (a ValueError) for a damaged shard of `split` among those
            read: one whose checksum differs (the store compares it at its first read), or one holding an id
            outside the vocabulary.
    """
    import tensorflow as tf

    from tf_lm.data.pipeline import contiguous_windows, damaged_store_errors
    from tf_lm.training.metrics import derived, summed_next_token_loss

    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(
            f"`max_batches` must be an integer >= 1 or None. Received: `max_batches={max_batches!r}`"
        )
    if store.fingerprint != tokenizer.fingerprint:
        raise ValueError(
            f"Token store {store.directory!r} was prepared with another tokenizer than the model's; prepare it with "
            f"experiments.prepare_data --tokenizer_dir=<model_dir>/{artifacts.SAVED_DIR}/{artifacts.TOKENIZER_DIR}."
        )
    windows = contiguous_windows(store, split, model.config.block_size, batch_size)
    if max_batches is not None:
        windows = windows.take(max_batches)

    batch_loss = tf.function(lambda inputs, targets: summed_next_token_loss(model, inputs, targets),
                             jit_compile=True)
    total, count = 0.0, 0
    with damaged_store_errors():
        for inputs, targets in windows:
            batch_total, batch_count = batch_loss(inputs, targets)
            total, count = total + float(batch_total), count + int(batch_count)
    return {**derived(total / count), "tokens": count}


def score_text(model, tokenizer, text: str) -> dict:
    """log P(W) of `text` and each token's log-probability given the tokens before it.

    Returns:
        dict with `tokens` (the token strings), `token_log_probs` (one per token after the first) and
        `log_likelihood` (their sum, in nats).

    Raises:
        ValueError: if `text` has fewer than 2 tokens or more than the model's context.
    """
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"--score needs at least 2 tokens (the first is only the condition). Received: {text!r}")
    if len(ids) > model.config.block_size:
        raise ValueError(
            f"--score text has {len(ids)} tokens, more than the model's context of {model.config.block_size}; "
            "score a shorter text."
        )
    scores = model.score(np.array([ids], dtype=np.int32))
    return {
        "tokens": [tokenizer.decode([i]) for i in ids],
        "token_log_probs": np.asarray(scores["token_log_probs"])[0].tolist(),
        "log_likelihood": float(np.asarray(scores["log_likelihood"])[0]),
    }


def _trained_store(run: dict) -> dict | None:
    """The `source` and `source_options` a run's token store was prepared from: recorded in its `run_config.json`,
    or, in one written before that record, read from the manifest of its `store:` dataset if the store is there."""
    dataset = run["train"].get("dataset") or ""
    if "store" in run or not dataset.startswith(STORE_SCHEME):
        return run.get("store")
    directory = dataset[len(STORE_SCHEME):]
    manifest = os.path.join(directory, MANIFEST)
    return TokenStore(directory).manifest["request"] if gfile(manifest).exists(manifest) else None


def _same_dataset(recorded: str | None, given: str) -> bool:
    """Whether two --dataset values name the same data: a `text:` or `store:` path is compared however it is
    spelled (relative or absolute, `~`, `//`); relative ones are taken from the current directory."""
    return recorded is not None and dataset_path(recorded) == dataset_path(given)


def run_source_options(flag_values: flags.FlagValues) -> dict:
    """`source_options`, with the split options the model was trained with where the flags leave them unset and
    --dataset is the text it was trained on: the run's own dataset (its `run_config.json`), or the source its
    `store:` dataset was prepared from. Else its validation split would hold training text."""
    options = source_options(flag_values)
    path = os.path.join(flag_values.model_dir, RUN_CONFIG)
    if not gfile(path).exists(path):
        return options
    run = read_run_config(path)
    # `dataset_path` names the run's dataset from any directory; a run_config.json written before it has only the
    # flag as typed, relative to a directory it does not record.
    if _same_dataset(run.get("dataset_path", run["train"].get("dataset")), flag_values.dataset):
        recorded = run.get("data") or {}
    elif (store := _trained_store(run)) is not None and _same_dataset(store.get("source"), flag_values.dataset):
        recorded = store.get("source_options") or {}
    else:
        return options
    return {**options, **{name: recorded[name] for name in options
                          if name in recorded and not flag_values[name].present}}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with one_line_errors():
        split_flags = [f"--{name}" for name in ("dataset", "split", "batch_size", "max_batches", "validation_fraction",
                                                "tfds_data_dir", "tfds_manual_dir") if FLAGS[name].present]
        if FLAGS.score is not None and split_flags:
            raise ValueError(f"--score scores its own text, not a split; drop {', '.join(split_flags)}.")
        preparing = [f"--{name}" for name in source_options(FLAGS) if FLAGS[name].present]
        if FLAGS.dataset.startswith(STORE_SCHEME) and preparing:
            raise ValueError(f"--dataset={FLAGS.dataset} is prepared already (its splits are the store's); "
                             f"drop {', '.join(preparing)}.")
        model, tokenizer = artifacts.load_model_dir(FLAGS.model_dir)  # TensorFlow loads here, once flags are good
        unit = "char" if tokenizer.is_char_level else "token"
        if FLAGS.score is not None:
            result = score_text(model, tokenizer, FLAGS.score)
            n = len(result["token_log_probs"])
            print(f"log P(W) = {result['log_likelihood']:.4f} nats ({result['log_likelihood'] / math.log(2):.3f} bits) "
                  f"over {n} predicted tokens; the first token {result['tokens'][0]!r} is the condition")
            for token, log_prob in zip(result["tokens"][1:], result["token_log_probs"]):
                print(f"  {token!r:>12}  log P = {log_prob:8.4f}")
            return
        with tempfile.TemporaryDirectory(prefix="tf_lm_eval_") as scratch:
            if FLAGS.dataset.startswith(STORE_SCHEME):
                store = TokenStore(FLAGS.dataset[len(STORE_SCHEME):])
            else:
                store = prepare_store(FLAGS.dataset, os.path.join(scratch, "store"), tokenizer=tokenizer,
                                      **run_source_options(FLAGS))
            result = evaluate_split(model, tokenizer, store, FLAGS.split, FLAGS.batch_size, FLAGS.max_batches)
    print(f"{FLAGS.dataset} [{FLAGS.split}], {result['tokens']:,} tokens: loss {result['loss']:.4f} nats/token, "
          f"perplexity {result['perplexity']:.3f}, {result['bits']:.4f} bits/{unit}")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    with flag_group("model", flag_values):
        define_trained_model_flag(flag_values)
    define_data_flags(flag_values)
    with flag_group("evaluation", flag_values):
        flags.DEFINE_enum("split", "validation", ["validation", "train"], "Which split of --dataset to evaluate.",
                          flag_values=flag_values)
        # bounded here, so a bad value is refused before a corpus is prepared for it
        flags.DEFINE_integer("batch_size", 16, "Windows per evaluation batch.", lower_bound=1,
                             flag_values=flag_values)
        flags.DEFINE_integer("max_batches", None, "Evaluate only this many batches (default: the whole split).",
                             lower_bound=1, flag_values=flag_values)
        flags.DEFINE_string("score", None, "Instead of a split: print log P(W) of this text and each token's "
                            "log-prob.", flag_values=flag_values)
    flags.mark_flags_as_required(["model_dir"], flag_values)


if __name__ == "__main__":
    define_flags()
    run_script(main)
