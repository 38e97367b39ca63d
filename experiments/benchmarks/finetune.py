"""BERT fine-tuning: the `keras` backend (our `BertClassifier`) beside the `hf` one (`TFBertForSequenceClassification`).

Both fine-tune the offline MiniLM-L6 BERT on the first 8,000 SST-2 sentences at max_length 64, batch 32, with
eight length buckets, through the same loop and train step (`tf_lm.bert.finetune`); only the model code differs.
Throughput is timed in alternating windows of 20 steps (hf, keras, hf, ...), so both run under the same
background load on this shared machine, each after untimed windows that trace every bucket shape. Both run in
`mixed_bfloat16` with the forward/backward pass not XLA-compiled, the fastest setting of each on this CPU
(AVX512_BF16: oneDNN's bfloat16 matmuls; XLA's bfloat16 dots are slower, and XLA compiles every bucket shape anew);
the keras backend's optimizer update is XLA-compiled on its own (`make_train_step(jit_update=True)`; transformers'
tf_keras AdamW does not compile, and already runs fused `ResourceApplyAdam` kernels). Then each backend fine-tunes
for one epoch and is evaluated on all 872 SST-2 dev sentences, once per seed in `SEEDS`.

    python -m experiments.benchmark --sections=finetune
"""

from __future__ import annotations

import tempfile
import time

from experiments.benchmarks.common import SHARED_DATA, Row

SST2 = SHARED_DATA / "sst2"
MAX_LENGTH = 64
BATCH_SIZE = 32
TRAIN_EXAMPLES = 8000
LEARNING_RATE = 1e-4
HEAD_LR_MULTIPLIER = 20.0
# A seed moves one-epoch dev accuracy by up to 1.5 points (dropout, shuffling, the new head): report a mean.
SEEDS = (0, 1, 2, 3, 4)
PRECISION = "mixed_bfloat16"
BACKENDS = ("hf", "keras")


def _config(**overrides):
    from tf_lm.bert.finetune import FinetuneConfig

    return FinetuneConfig(max_length=MAX_LENGTH, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                          head_lr_multiplier=HEAD_LR_MULTIPLIER, **overrides)


def _interleaved_rates(train, steps: int, rounds: int) -> dict[str, float]:
    """Examples/s of each backend, timed in alternating windows of `steps` batches (mean of `rounds`).

    Real examples only: each bucket's last batch is filled with zero-weight rows, which are not counted.
    """
    from tf_lm.bert import data
    from tf_lm.bert.finetune import load_hf_classifier, load_keras_classifier, make_trainer
    from tf_lm.distribute import resolve_strategy

    strategy = resolve_strategy("cpu")
    windows = {}
    for backend in BACKENDS:
        config = _config(warmup_fraction=0.0, precision=PRECISION, backend=backend)
        load = load_keras_classifier if backend == "keras" else load_hf_classifier
        classifier = load("minilm", 2, None, PRECISION, seed=0)
        token_ids = data.encode(classifier.tokenizer, train.texts, MAX_LENGTH)
        per_epoch = data.count_batches(token_ids, BATCH_SIZE, config.bucket_widths)
        real_per_step = len(train) / per_epoch
        trainer = make_trainer(classifier, config, total_steps=10 * steps * (rounds + 1), strategy=strategy)
        dataset = data.make_dataset(token_ids, train.labels, BATCH_SIZE, shuffle=True,
                                    bucket_widths=config.bucket_widths).repeat()

        def window(trainer=trainer, dataset=dataset, real_per_step=real_per_step) -> float:
            start = time.perf_counter()
            trainer.train(dataset, steps)
            return steps * real_per_step / (time.perf_counter() - start)

        # Untimed: one batch of every bucket shape (each traces), then a window.
        warm, count = _one_batch_per_bucket(data, token_ids, train.labels, config.bucket_widths)
        trainer.train(warm, count)
        window()
        windows[backend] = window
    rates = {backend: [] for backend in BACKENDS}
    for _ in range(rounds):
        for backend in BACKENDS:
            rates[backend].append(windows[backend]())
    return {backend: sum(values) / rounds for backend, values in rates.items()}


def _one_batch_per_bucket(data, token_ids, labels, widths):
    lengths = [len(row) for row in token_ids]
    picks = [i for low, high in zip((0,) + widths, widths)
             for i in [next((i for i, n in enumerate(lengths) if low < n <= high), None)] if i is not None]
    return data.make_dataset([token_ids[i] for i in picks], labels[picks], BATCH_SIZE, bucket_widths=widths), len(picks)


def _accuracies(train, dev, quick: bool, backend: str) -> tuple[list[dict], float]:
    from tf_lm.bert.finetune import finetune
    from tf_lm.distribute import resolve_strategy

    records, wall = [], None
    for seed in SEEDS[:1] if quick else SEEDS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as output_dir:
            config = _config(epochs=1, seed=seed, precision=PRECISION, backend=backend)
            records += finetune("minilm", train, dev, config, output_dir, resolve_strategy("cpu"))
        wall = wall or time.perf_counter() - start
    return records, wall


def run(quick: bool) -> list[Row]:
    from tf_lm.bert import data

    train = data.read_table(str(SST2 / "train.tsv"), max_examples=512 if quick else TRAIN_EXAMPLES)
    dev = data.read_table(str(SST2 / "dev.tsv"), max_examples=128 if quick else None)
    steps, rounds = (5, 1) if quick else (20, 3)
    rates = _interleaved_rates(train, steps, rounds)
    setting = f"MiniLM-L6, SST-2 first {len(train):,}, T<={MAX_LENGTH}, B={BATCH_SIZE}, 8 length buckets, {PRECISION}"
    rows = [Row("finetune", f"train steps, {setting}", "examples/s", rates["keras"], rates["hf"],
                "hf backend (TFBertForSequenceClassification)", ">= 1.3x",
                f"keras backend (BertClassifier); alternating windows of {steps} steps, mean of {rounds}")]
    results = {backend: _accuracies(train, dev, quick, backend) for backend in ("keras", "hf")}
    means = {b: sum(r["eval_accuracy"] for r in records) / len(records) for b, (records, _) in results.items()}
    seeds = SEEDS[:len(results["keras"][0])]
    for backend, (records, wall) in results.items():
        accuracies = ", ".join(f"{r['eval_accuracy']:.4f}" for r in records)
        rows += [
            Row("finetune", f"{backend}: dev accuracy after 1 epoch ({len(dev)} sentences), mean of seeds {seeds}",
                "accuracy", means[backend], means["hf"] if backend == "keras" else None,
                "hf backend" if backend == "keras" else "", "keras within 0.3 point of hf" if backend == "keras"
                else "", f"seeds: {accuracies}; lr {LEARNING_RATE:g} (head x{HEAD_LR_MULTIPLIER:g}), {PRECISION}"),
            Row("finetune", f"{backend}: 1 epoch end to end, {setting}", "examples/s",
                records[0]["train_examples_per_s"], notes="seed 0, tracing included"),
            Row("finetune", f"{backend}: evaluate {len(dev)} dev sentences", "s", records[0]["eval_seconds"]),
            Row("finetune", f"{backend}: fine-tune wall time (load, tokenise, epoch, eval, save)", "s", wall),
        ]
    return rows
