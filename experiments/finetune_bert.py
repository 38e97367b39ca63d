"""Fine-tunes a pretrained BERT for text classification: our Keras 3 `BertClassifier` (--backend=keras, the
default) or transformers' `TFBertForSequenceClassification` (--backend=hf), through the same training step.

    python -m experiments.finetune_bert --model=minilm --dataset=tfds:glue/sst2 --max_length=64 \\
        --epochs=3 --output_dir=runs/sst2
    python -m experiments.finetune_bert --model=minilm --train_file=../shared/data/sst2/train.tsv \\
        --eval_file=../shared/data/sst2/dev.tsv --max_train_examples=8000 --epochs=1 --output_dir=runs/sst2

The best model (by eval accuracy) lands in `<output_dir>/best` (a Hugging Face checkpoint: safetensors, config,
tokenizer; the keras backend adds `model.keras`), ready for
`python -m experiments.predict_bert --model_dir=<output_dir>/best "a sentence"`; per-epoch metrics go to
`<output_dir>/history.json`.
"""

from __future__ import annotations

import dataclasses

from absl import flags, logging

from experiments.flags import define_strategy_flags, flag_group, one_line_errors, reported_stops, run_script

FLAGS = flags.FLAGS
TFDS_PREFIX = "tfds:"


def define_finetune_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The flags of `finetune_bert`, in --help's groups: model, data, optimisation, run, distribution."""
    with flag_group("model", flag_values):
        flags.DEFINE_enum("backend", "keras", ["keras", "hf"],
                          "keras: our BertClassifier (Keras 3); hf: transformers' TFBertForSequenceClassification.",
                          flag_values=flag_values)
        flags.DEFINE_string("model", "minilm",
                            "'minilm' (offline MiniLM-L6 BERT), a checkpoint directory, or (--backend=hf) a hub id.",
                            flag_values=flag_values)
    with flag_group("data", flag_values):
        flags.DEFINE_string("dataset", None, "A TFDS text-classification dataset, e.g. tfds:glue/sst2 (or "
                            "--train_file).", flag_values=flag_values)
        flags.DEFINE_string("train_split", "train", "TFDS split to train on.", flag_values=flag_values)
        flags.DEFINE_string("eval_split", "validation", "TFDS split to evaluate on.", flag_values=flag_values)
        flags.DEFINE_string("tfds_data_dir", None, "Where prepared TFDS datasets live (TFDS's default if unset).",
                            flag_values=flag_values)
        flags.DEFINE_string("train_file", None, "Training TSV/CSV file with a header (instead of --dataset).",
                            flag_values=flag_values)
        flags.DEFINE_string("eval_file", None, "Evaluation TSV/CSV file, with --train_file.", flag_values=flag_values)
        flags.DEFINE_string("text_key", "sentence", "Text column / feature (a column name, or a 0-based index).",
                            flag_values=flag_values)
        flags.DEFINE_string("label_key", "label", "Integer label column / feature (a column name, or a 0-based index).",
                            flag_values=flag_values)
        flags.DEFINE_integer("num_labels", None, "Number of classes; inferred from the data if unset.",
                             flag_values=flag_values)
        flags.DEFINE_list("label_names", None, "Class names by id, e.g. negative,positive (default: TFDS names).",
                          flag_values=flag_values)
        flags.DEFINE_integer("max_train_examples", None, "Train on only the first this many examples.",
                             flag_values=flag_values)
        flags.DEFINE_integer("max_length", 128, "Longest sequence in tokens ([CLS]/[SEP] included); longer are cut.",
                             flag_values=flag_values)
        flags.DEFINE_integer("num_buckets", 8, "Length buckets (few padded shapes); 0 pads each batch to its longest.",
                             flag_values=flag_values)
        flags.DEFINE_bool("packing", None, "Pack each (random) training batch's sentences into rows as wide as its "
                          "longest (default: on for --backend=keras without --jit_compile, the only setting that can; "
                          "buckets then serve evaluation).", flag_values=flag_values)
    with flag_group("optimisation", flag_values):
        flags.DEFINE_integer("batch_size", 32, "Global batch size, split across replicas.", flag_values=flag_values)
        flags.DEFINE_float("learning_rate", 5e-5, "Peak AdamW learning rate (linear warm-up, then linear decay).",
                           flag_values=flag_values)
        flags.DEFINE_float("head_lr_multiplier", 1.0, "Pooler and classifier train at this multiple of "
                           "--learning_rate.", flag_values=flag_values)
        flags.DEFINE_float("warmup_fraction", 0.1, "Share of the training steps spent warming up.",
                           flag_values=flag_values)
        flags.DEFINE_float("weight_decay", 0.01, "AdamW weight decay (not applied to LayerNorm and biases).",
                           flag_values=flag_values)
        flags.DEFINE_integer("epochs", 3, "Passes over the training data.", flag_values=flag_values)
        flags.DEFINE_integer("max_steps", None, "Train this many steps instead of --epochs passes.",
                             flag_values=flag_values)
    with flag_group("run", flag_values):
        flags.DEFINE_string("output_dir", None, "Where best/ and history.json are written.", flag_values=flag_values)
        flags.DEFINE_integer("seed", 0, "Seed of the shuffling, the new head's initial weights and dropout.",
                             flag_values=flag_values)
        flags.DEFINE_bool("jit_compile", False, "XLA-compile the train and eval steps.", flag_values=flag_values)
    with flag_group("distribution", flag_values):
        define_strategy_flags(flag_values)
        flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"], "mixed_bfloat16: bfloat16 "
                          "compute, float32 weights (fast on AVX512_BF16/AMX CPUs, GPUs, TPUs).",
                          flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = FLAGS):
    """The one mapping from flags to a `FinetuneConfig`."""
    from tf_lm.bert.config import FinetuneConfig

    names = ("max_length", "batch_size", "learning_rate", "head_lr_multiplier", "epochs", "max_steps",
             "warmup_fraction", "weight_decay", "num_buckets", "jit_compile", "precision", "seed", "backend", "packing")
    return FinetuneConfig(**{name: flag_values[name].value for name in names})


def load_data(dataset: str | None, train_file: str | None, eval_file: str | None, text_key: str, label_key: str,
              max_train_examples: int | None, train_split: str, eval_split: str, tfds_data_dir: str | None):
    """(train, eval) `TextClassificationData` from a `tfds:` dataset or a pair of files.

    Raises:
        ValueError: if neither or both sources are given, `max_train_examples` < 1, or the data are bad (see
            `tf_lm.bert.data`).
        FileNotFoundError: for a missing file.
    """
    from tf_lm.bert import data

    if (dataset is None) == (train_file is None):
        raise ValueError("Pass exactly one of --dataset=tfds:<name> or --train_file (with --eval_file).")
    # Checked here, in the flag's name: the loaders call it `max_examples`.
    if max_train_examples is not None and max_train_examples < 1:
        raise ValueError(f"--max_train_examples must be >= 1 (unset keeps every example). Received: "
                         f"--max_train_examples={max_train_examples}")
    if dataset is not None:
        if not dataset.startswith(TFDS_PREFIX):
            raise ValueError(f"--dataset must look like tfds:<name>, e.g. tfds:glue/sst2. Received: "
                             f"--dataset={dataset!r}")
        name = dataset.removeprefix(TFDS_PREFIX)
        return (
            data.load_tfds(name, train_split, text_key, label_key, tfds_data_dir, max_train_examples),
            data.load_tfds(name, eval_split, text_key, label_key, tfds_data_dir),
        )
    if eval_file is None:
        raise ValueError("--train_file needs an --eval_file to pick the best model on.")
    return (
        data.read_table(train_file, text_key, label_key, max_train_examples),
        data.read_table(eval_file, text_key, label_key),
    )


def report(history: list[dict], output_dir: str) -> str:
    """The line a run ends with: its best evaluation, and whether `output_dir/best` now holds that model."""
    from tf_lm.bert.finetune import best_on_disk

    if not history:  # resumed after its last evaluation, with no history.json left to read the evaluations from
        return f"nothing left to train in {output_dir}"
    best = max(history, key=lambda record: record["eval_accuracy"])
    kept = best_on_disk(output_dir)
    # best/ is replaced only by a strictly better model: on a tie it still holds the earlier one.
    if kept == best:
        where = f"saved to {output_dir}/best"
    elif kept:
        where = f"{output_dir}/best keeps an earlier model, of eval accuracy {kept['eval_accuracy']:.4f}"
    else:  # a worker other than the chief writes no best/
        where = f"{output_dir}/best holds no model"
    return (f"best eval accuracy {best['eval_accuracy']:.4f} (f1 {best['eval_f1']:.4f}) after epoch {best['epoch']}; "
            f"{where}")


def run(flag_values: flags.FlagValues = FLAGS) -> str:
    """Fine-tunes as the flags say; returns the line the run ends with (`report`).

    Raises:
        ValueError, FileNotFoundError: for bad flags or data (before TensorFlow loads), or a bad model or output
            directory. A SIGTERM or SIGINT ends it after a checkpoint, as `reported_stops` says.
    """
    values = flag_values
    config = config_from_flags(values)
    train_data, eval_data = load_data(
        values.dataset, values.train_file, values.eval_file, values.text_key, values.label_key,
        values.max_train_examples, values.train_split, values.eval_split, values.tfds_data_dir,
    )
    if values.label_names:
        train_data = dataclasses.replace(train_data, label_names=values.label_names)
    # Imported only now: TensorFlow (and, for --backend=hf, transformers) need not load for bad flags or data.
    from tf_lm.bert.finetune import finetune
    from tf_lm.distribute import resolve_strategy
    from tf_lm.training.trainer import TrainingInterrupted

    strategy = resolve_strategy(values.strategy, values.tpu)
    with reported_stops(TrainingInterrupted):
        history = finetune(values.model, train_data, eval_data, config, values.output_dir, strategy,
                           values.num_labels, verbose=True)
    return report(history, values.output_dir)


def main(argv):
    del argv
    with one_line_errors():
        print(run(FLAGS))


if __name__ == "__main__":
    define_finetune_flags()
    flags.mark_flags_as_required(["output_dir"])
    logging.set_verbosity(logging.INFO)
    run_script(main)
