"""Trains a `TransformerLM` on a text source under a `tf.distribute` strategy; rerun the command to resume.

    python -m experiments.train_lm --model_dir=runs/shakespeare \\
        --dataset=text:../shared/data/tinyshakespeare/input.txt --preset=nano

Writes into --model_dir: model.keras + config.json + tokenizer/ (at the end, by the chief), run_config.json
(the resolved model and training config), checkpoints/, metrics.csv, logs/ (TensorBoard) and loss.png.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags, logging

from experiments.flags import configs_from_flags, define_train_flags, run_script
from tf_lm import artifacts
from tf_lm.configs import LMConfig
from tf_lm.data import build_tokenizer, lm_datasets, load_tokenizer, read_source
from tf_lm.distribute import is_chief, resolve_strategy
from tf_lm.training import TrainConfig, Trainer, TrainingInterrupted, measure_matmul_peak

RUN_CONFIG = "run_config.json"
# Fields that decide which batches a step sees or what the weights are; changing one in a model_dir that
# already holds a run would silently mix two runs.
RUN_IDENTITY = ("dataset", "tokenizer", "bpe_vocab_size", "batch_size", "seed", "precision")


def _check_model_dir(model_dir: str, run_config: dict) -> None:
    """Raises ValueError if `model_dir` already holds a run or model that differs from `run_config`."""
    path = os.path.join(model_dir, RUN_CONFIG)
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        changed = [f"{k}: {previous['model'].get(k)!r} -> {v!r}" for k, v in run_config["model"].items()
                   if previous["model"].get(k) != v]
        changed += [f"{k}: {previous['train'].get(k)!r} -> {run_config['train'][k]!r}" for k in RUN_IDENTITY
                    if previous["train"].get(k) != run_config["train"][k]]
        if previous.get("tokenizer_fingerprint") != run_config["tokenizer_fingerprint"]:
            changed.append("tokenizer vocabulary")
        if changed:
            raise ValueError(
                f"--model_dir={model_dir!r} holds a run with a different config ({'; '.join(changed)}); "
                "use a new --model_dir, or the original flags to resume it."
            )
    if os.path.isfile(os.path.join(model_dir, artifacts.CONFIG_FILE)):
        saved = artifacts.read_config(model_dir).to_dict()
        if saved != run_config["model"]:
            raise ValueError(
                f"--model_dir={model_dir!r} holds a saved model of a different config ({saved}); "
                "use a new --model_dir."
            )


def _write_json(path: str, value: dict) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(temporary, path)


def train(model_config: LMConfig, train_config: TrainConfig, model_dir: str, strategy_name: str = "auto",
          tpu: str | None = None, data_options: dict | None = None, verbose: bool = True):
    """Reads the data, builds the tokenizer, checks `model_dir`, trains (resuming) and saves the model.

    Args:
        model_config: `LMConfig`; its `vocab_size` is replaced by the tokenizer's.
        train_config: `TrainConfig`.
        model_dir: str. Output directory (see the module docstring).
        strategy_name, tpu: passed to `resolve_strategy`.
        data_options: dict of `read_source` options (`validation_fraction`, `tfds_data_dir`, `tfds_manual_dir`)
            plus `cache_dir` for the token ids.
        verbose: bool. Progress bar and summary lines.

    Returns:
        `(trainer, tokenizer, result)` with `result` as `Trainer.fit` returns it.

    Raises:
        ValueError, FileNotFoundError: for bad data, config, strategy or model_dir (nothing written yet);
            `TrainingDiverged` (a ValueError) when the loss becomes NaN.
        TrainingInterrupted: on SIGTERM, after a checkpoint.
    """
    data_options = dict(data_options or {})
    cache_dir = data_options.pop("cache_dir", None)
    strategy = resolve_strategy(strategy_name, tpu)
    corpus = read_source(train_config.dataset, **data_options)
    tokenizer_dir = os.path.join(model_dir, artifacts.TOKENIZER_DIR)
    if os.path.isdir(tokenizer_dir):  # a finished run: keep its exact vocabulary
        tokenizer = load_tokenizer(tokenizer_dir)
    elif train_config.tokenizer == "char":
        # The vocabulary of the whole text, as nanoGPT's prepare.py: a character seen only in validation still
        # gets an id.
        tokenizer = build_tokenizer("char", corpus.train + corpus.validation)
    else:
        tokenizer = build_tokenizer("bpe", corpus.train, vocab_size=train_config.bpe_vocab_size)
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    run_config = {"model": model_config.to_dict(), "train": train_config.to_dict(), "strategy": strategy_name,
                  "replicas": strategy.num_replicas_in_sync, "tokenizer_fingerprint": tokenizer.fingerprint}
    _check_model_dir(model_dir, run_config)

    peak = measure_matmul_peak() if verbose else None
    unit = "char" if train_config.tokenizer == "char" else "token"
    trainer = Trainer(model_config, train_config, strategy, model_dir, peak_flops=peak, verbose=verbose,
                      bits_unit=unit)
    chief = is_chief(strategy)
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        _write_json(os.path.join(model_dir, RUN_CONFIG), run_config)
    if verbose:
        print(f"{model_config}\n{train_config}\nstrategy: {type(strategy).__name__} with "
              f"{strategy.num_replicas_in_sync} replica(s); tokenizer: {train_config.tokenizer}, "
              f"{tokenizer.vocab_size} ids; non-embedding parameters: {model_config.non_embedding_params():,}",
              flush=True)

    def datasets(start_step, context):
        return lm_datasets(corpus, tokenizer, model_config.block_size, train_config.batch_size,
                           seed=train_config.seed, start_step=start_step, cache_dir=cache_dir, input_context=context)

    validation_sets = {}

    def validation(context):
        # One validation pipeline per input shard, built once: evaluation runs every --eval_every steps.
        key = None if context is None else (context.input_pipeline_id, context.num_input_pipelines)
        if key not in validation_sets:
            validation_sets[key] = datasets(0, context)[1]
        return validation_sets[key]

    result = trainer.fit(lambda start, context: datasets(start, context)[0], validation)
    if chief:
        artifacts.save_model_dir(model_dir, trainer.model, tokenizer)
    if verbose:
        v = result["validation"] or {}
        mfu = "" if result["mfu"] is None else f", MFU {result['mfu']:.2f}"
        rate = "" if result["tokens_per_second"] is None else f", {result['tokens_per_second']:,.0f} tokens/s{mfu}"
        val = (f", validation loss {v['loss']:.4f} ({v['bits']:.3f} bits/{unit}, "
               f"perplexity {v['perplexity']:.2f})") if v else ""
        print(f"step {result['step']}{val}{rate}", flush=True)
        print(f"weights sha256 {result['weights_digest']}", flush=True)
        if chief:
            print(f"saved {model_dir}/{artifacts.MODEL_FILE}", flush=True)
    return trainer, tokenizer, result


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint INFO lines would bury the progress bar
    values = flags.FLAGS
    try:
        model_config, train_config = configs_from_flags(values)
        data_options = {"validation_fraction": values.validation_fraction, "tfds_data_dir": values.tfds_data_dir,
                        "tfds_manual_dir": values.tfds_manual_dir, "cache_dir": values.data_cache_dir}
        train(model_config, train_config, values.model_dir, values.strategy, values.tpu, data_options)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    except TrainingInterrupted as error:
        raise SystemExit(f"stopped: {error}") from None


if __name__ == "__main__":
    define_train_flags()
    flags.mark_flags_as_required(["model_dir"])
    run_script(main)
