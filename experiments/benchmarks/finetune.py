"""BERT fine-tuning: the `keras` backend (our `BertClassifier`) beside the `hf` one (`TFBertForSequenceClassification`).

Both fine-tune the offline MiniLM-L6 BERT on the first 8,000 SST-2 sentences at max_length 64, batch 32, through the
same loop and train step (`tf_lm.bert.finetune`), each with its default batches: eight length buckets for hf,
random batches packed into rows as wide as their longest sentence for keras (which alone can keep packed sentences
apart). Throughput is timed over one whole epoch of each, in alternating windows of 20 steps (hf, keras, hf, ...),
so both run under the same background load on this shared machine and see every length of the data once (the first
windows alone are no sample: buckets fill first with the common short phrases), each after untimed steps that
trace its shapes. Both run in `mixed_bfloat16` with the forward/backward pass not XLA-compiled, the fastest
setting of each on this CPU (AVX512_BF16: oneDNN's bfloat16 matmuls; XLA's bfloat16 dots are slower, and XLA
compiles every shape anew);
the keras backend's optimizer update is XLA-compiled on its own (`make_train_step(jit_update=True)`; transformers'
tf_keras AdamW does not compile, and already runs fused `ResourceApplyAdam` kernels). Then each backend fine-tunes
for one epoch and is evaluated on all 872 SST-2 dev sentences, once per seed in `SEEDS`.

The whole section takes about 15 minutes here, longer than one hold of the shared machine's lock should last. So
each measurement (the throughput windows; one fine-tune of one backend and seed) is cached under
`bench_results/finetune/<digest>/`, the digest covering the settings and every source file the measurement runs,
and a run starts no new measurement after `BUDGET_SECONDS`: it then reports what is missing, and rerunning the
section continues from the cache.

    python -m experiments.benchmark --sections=finetune
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from pathlib import Path

from experiments.benchmarks.common import SHARED_DATA, Row
from tf_lm.fileio import atomic_write

SST2 = SHARED_DATA / "sst2"
DATA_FILES = (SST2 / "train.tsv", SST2 / "dev.tsv")
MAX_LENGTH = 64
BATCH_SIZE = 32
TRAIN_EXAMPLES = 8000
LEARNING_RATE = 1e-4
HEAD_LR_MULTIPLIER = 20.0
# A seed moves one-epoch dev accuracy by up to 1.5 points (dropout, shuffling, the new head): report a mean.
SEEDS = (0, 1, 2, 3, 4)
PRECISION = "mixed_bfloat16"
BACKENDS = ("hf", "keras")
REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path("bench_results") / "finetune"
BUDGET_SECONDS = 8 * 60
# What a measurement runs: a change to any of these makes the cached results stale.
SOURCES = ("experiments/benchmarks/finetune.py", "tf_lm/bert/**/*.py", "tf_lm/layers/*.py", "tf_lm/training/*.py",
           "tf_lm/distribute.py")


def _config(**overrides):
    from tf_lm.bert.config import FinetuneConfig

    return FinetuneConfig(max_length=MAX_LENGTH, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                          head_lr_multiplier=HEAD_LR_MULTIPLIER, **overrides)


def _interleaved_rates(train, steps: int) -> dict[str, float]:
    """Examples/s of each backend over one epoch of its batches, timed in alternating windows of `steps` batches."""
    from tf_lm.bert import data
    from tf_lm.bert.finetune import load_classifier, make_trainer
    from tf_lm.distribute import resolve_strategy

    strategy = resolve_strategy("cpu")
    windows = {}
    for backend in BACKENDS:
        config = _config(warmup_fraction=0.0, precision=PRECISION, backend=backend)
        classifier = load_classifier("minilm", 2, None, config)
        token_ids = data.encode(classifier.tokenizer, train.texts, MAX_LENGTH)
        widths = config.train_bucket_widths
        per_epoch = data.count_batches(token_ids, BATCH_SIZE, widths)
        trainer = make_trainer(classifier, config, total_steps=2 * per_epoch, strategy=strategy)

        def epoch(seed, widths=widths, token_ids=token_ids):
            return data.make_dataset(token_ids, train.labels, BATCH_SIZE, shuffle=True, seed=seed, bucket_widths=widths)

        # Untimed: one batch of every bucket shape (each traces), then a window of another epoch.
        if widths is not None:
            trainer.train(*_one_batch_per_bucket(data, token_ids, train.labels, widths))
        trainer.train(epoch(seed=1), steps)

        # The timed epoch's batches, made once and held in memory (untimed): each window skips the batches already
        # timed, and skipping through the pipeline itself would redo their bucketing or batching inside the timing
        # (3.7 s an epoch of windows for hf's buckets, 2.1 s for keras's random batches; 0.25 and 0.15 s cached).
        timed = epoch(seed=0).cache()
        for _ in timed:
            pass
        done = [0]  # steps of the timed epoch so far

        def window(trainer=trainer, timed=timed, per_epoch=per_epoch, done=done) -> float:
            count = min(steps, per_epoch - done[0])
            start = time.perf_counter()
            trainer.train(timed.skip(done[0]), count)
            done[0] += count
            return time.perf_counter() - start

        windows[backend] = (window, per_epoch)
    seconds = {backend: 0.0 for backend in BACKENDS}
    for _ in range(max(math.ceil(per_epoch / steps) for _, per_epoch in windows.values())):
        for backend, (window, _) in windows.items():
            seconds[backend] += window()  # 0 steps once its epoch is done
    return {backend: len(train) / total for backend, total in seconds.items()}


def _one_batch_per_bucket(data, token_ids, labels, widths):
    lengths = [len(row) for row in token_ids]
    picks = [i for low, high in zip((0,) + widths, widths)
             for i in [next((i for i, n in enumerate(lengths) if low < n <= high), None)] if i is not None]
    return data.make_dataset([token_ids[i] for i in picks], labels[picks], BATCH_SIZE, bucket_widths=widths), len(picks)


def _fine_tune(train, dev, backend: str, seed: int) -> dict:
    """One epoch of `backend` with `seed`, evaluated on `dev`: the epoch's record and the wall time of it all."""
    from tf_lm.bert.finetune import finetune
    from tf_lm.distribute import resolve_strategy

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        config = _config(epochs=1, seed=seed, precision=PRECISION, backend=backend)
        [record] = finetune("minilm", train, dev, config, output_dir, resolve_strategy("cpu"))
    return {**record, "wall_seconds": time.perf_counter() - start}


def _cache_dir(quick: bool) -> Path:
    digest = hashlib.sha256(repr((quick, MAX_LENGTH, BATCH_SIZE, TRAIN_EXAMPLES, PRECISION)).encode())
    for path in sorted(p for pattern in SOURCES for p in REPO.glob(pattern)):
        digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return CACHE_DIR / digest.hexdigest()[:16]


def _measured(cache: Path, key: str, measure, deadline: float):
    """`measure()`, cached in `cache/key.json`; None when it is not cached and `deadline` has passed."""
    path = cache / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if time.perf_counter() > deadline:
        return None
    result = measure()
    atomic_write(str(path), json.dumps(result))
    return result


def run(quick: bool) -> list[Row]:
    from tf_lm.bert import data

    train = data.read_table(str(SST2 / "train.tsv"), max_examples=512 if quick else TRAIN_EXAMPLES)
    dev = data.read_table(str(SST2 / "dev.tsv"), max_examples=128 if quick else None)
    steps = 5 if quick else 20
    seeds = SEEDS[:1] if quick else SEEDS
    cache, deadline = _cache_dir(quick), time.perf_counter() + BUDGET_SECONDS
    rates = _measured(cache, "rates", lambda: _interleaved_rates(train, steps), deadline)
    records = {(backend, seed): _measured(cache, f"{backend}-seed{seed}", lambda b=backend, s=seed: _fine_tune(
        train, dev, b, s), deadline) for seed in seeds for backend in ("keras", "hf")}
    missing = [key for key, record in records.items() if record is None] + (["rates"] if rates is None else [])
    if missing:
        return [Row("finetune", "incomplete: the time budget ran out; rerun the section to continue", "measurements",
                    len(missing), notes=f"missing: {missing}; done ones are cached in {cache}")]
    setting = f"MiniLM-L6, SST-2 first {len(train):,}, T<={MAX_LENGTH}, B={BATCH_SIZE}, {PRECISION}"
    rows = [Row("finetune", f"train steps, {setting}", "examples/s", rates["keras"], rates["hf"],
                "hf backend (TFBertForSequenceClassification; 8 length buckets)", ">= 1.3x",
                "keras backend (BertClassifier; random batches, packed); one epoch each, in alternating "
                f"windows of {steps} steps")]
    accuracies = {b: [records[b, seed]["eval_accuracy"] for seed in seeds] for b in ("keras", "hf")}
    means = {b: sum(values) / len(values) for b, values in accuracies.items()}
    for backend in ("keras", "hf"):
        first = records[backend, seeds[0]]
        listed = ", ".join(f"{a:.4f}" for a in accuracies[backend])
        rows += [
            Row("finetune", f"{backend}: dev accuracy after 1 epoch ({len(dev)} sentences), mean of seeds {seeds}",
                "accuracy", means[backend], means["hf"] if backend == "keras" else None,
                "hf backend" if backend == "keras" else "", "keras within 0.3 point of hf" if backend == "keras"
                else "", f"seeds: {listed}; lr {LEARNING_RATE:g} (head x{HEAD_LR_MULTIPLIER:g}), {PRECISION}"),
            Row("finetune", f"{backend}: 1 epoch end to end, {setting}", "examples/s",
                first["train_examples_per_s"], notes="seed 0, tracing included; seeds "
                + ", ".join(f"{records[backend, s]['train_examples_per_s']:.1f}" for s in seeds)),
            Row("finetune", f"{backend}: evaluate {len(dev)} dev sentences", "s", first["eval_seconds"]),
            Row("finetune", f"{backend}: fine-tune wall time (load, tokenise, epoch, eval, save)", "s",
                first["wall_seconds"], notes="seed 0"),
        ]
    return rows
