"""Data pipeline throughput beside the training throughput it has to feed, measured in the same run.

Char-level Tiny Shakespeare (`../shared/data/tinyshakespeare/input.txt`) at block 256: the train dataset is
iterated at batch 64, and the `char-small` model takes XLA-compiled AdamW steps at batch 8. If the pipeline
yields tokens far faster than training consumes them, data loading is never the bottleneck. A second row
times the vectorised `CharTokenizer.encode_array` against nanoGPT's per-character list comprehension.
"""

import tempfile

from experiments.benchmarks.common import SHARED_DATA, Row, race
from experiments.benchmarks.model import train_step
from tf_lm import LMConfig, TransformerLM
from tf_lm.data import lm_datasets, prepare_store

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
BLOCK_SIZE, PIPELINE_BATCH, TRAIN_BATCH = 256, 64, 8


def run(quick: bool):
    repeats, seconds = (1, 0.5) if quick else (5, 2.0)
    if not SHAKESPEARE.is_file():
        raise FileNotFoundError(f"The data benchmark reads {SHAKESPEARE}; put Tiny Shakespeare's input.txt there.")
    scratch = tempfile.TemporaryDirectory(prefix="tf_lm_bench_")
    store = prepare_store(f"text:{SHAKESPEARE}", scratch.name)
    tokenizer = store.tokenizer
    text = SHAKESPEARE.read_text(encoding="utf-8")

    train, _ = lm_datasets(store, BLOCK_SIZE, PIPELINE_BATCH)
    batches = iter(train)
    inputs, targets = next(batches)
    inputs, targets = inputs[:TRAIN_BATCH], targets[:TRAIN_BATCH]
    model = TransformerLM(LMConfig.preset("char-small", vocab_size=tokenizer.vocab_size))
    step = train_step(model)

    # Steps per second for both, each then scaled by its own tokens per step.
    rates = race(
        {"pipeline": lambda: next(batches), "training": lambda: step(inputs, targets).numpy()},
        units_per_step=1, repeats=repeats, min_seconds=seconds,
    )
    pipeline = rates["pipeline"] * PIPELINE_BATCH * BLOCK_SIZE
    training = rates["training"] * TRAIN_BATCH * BLOCK_SIZE

    stoi = {c: i for i, c in enumerate(tokenizer.chars)}
    encode = race(
        {"ours": lambda: tokenizer.encode_array(text), "loop": lambda: [stoi[c] for c in text]},
        units_per_step=len(text), repeats=repeats, min_seconds=seconds,
    )
    scratch.cleanup()
    return [
        Row("data", f"pipeline, char Tiny Shakespeare, T={BLOCK_SIZE}, B={PIPELINE_BATCH}", "tokens/s", pipeline,
            training, f"char-small train step (XLA, AdamW, B={TRAIN_BATCH})", target=">= 20x",
            notes="pipeline tokens/s over the tokens/s training consumes"),
        Row("data", f"CharTokenizer.encode_array, {len(text) / 1e6:.1f} MB", "chars/s", encode["ours"],
            encode["loop"], "nanoGPT [stoi[c] for c in s]",
            notes="what the pipeline calls; encode() adds a numpy-to-list conversion"),
    ]
