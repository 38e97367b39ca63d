"""Trains a `TransformerLM` on a token store under a `tf.distribute` strategy; rerun the command to resume.

    python -m experiments.train_lm --model_dir=runs/shakespeare \\
        --dataset=text:../shared/data/tinyshakespeare/input.txt --preset=nano
    python -m experiments.train_lm --model_dir=runs/corpus --dataset=store:stores/corpus --preset=gpt2
    python -m experiments.train_lm --model_dir=runs/shakespeare-lora --init_from=runs/python --lora_rank=8 \\
        --dataset=text:../shared/data/tinyshakespeare/input.txt

A `store:` dataset is read as it is (see experiments.prepare_data); any other source is first prepared into a
store under --data_cache_dir (default <model_dir>/data), which a resumed run reuses without re-tokenising. The
model's tokenizer is the store's; with --init_from, the data is tokenised with the checkpoint's tokenizer.

Writes into --model_dir: flags.txt (the flags given, and the warm-up the script chose for a short run, as an absl
flagfile), model/ (model.keras + config.json + tokenizer/, at the end, by the chief), run_config.json (the resolved
model, training and data config), checkpoints/, metrics.csv, logs/ (TensorBoard), loss.png and lock (held for the
whole run).

A rerun resumes; it is refused if it changes a flag that changes the result, since that would mix two runs. Only
the flags in NOT_IDENTITY may differ. `--flagfile=<model_dir>/flags.txt` reruns a run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
import tempfile

from absl import flags, logging

from experiments.flags import (
    RUN_CONFIG,
    bpe_sample_bytes,
    configs_from_flags,
    dataset_path,
    define_train_flags,
    one_line_errors,
    read_run_config,
    reported_stops,
    run_script,
    script_flag_names,
    source_options,
)
from tf_lm import artifacts
from tf_lm.configs import LMConfig, TrainConfig
from tf_lm.data import Source, TokenStore, load_tokenizer, open_source, prepare_store
from tf_lm.data.sources import SPLITS, STORE_SCHEME
from tf_lm.data.store import DEFAULT_BPE_SAMPLE_BYTES, MANIFEST
from tf_lm.fileio import (
    EXPORT_MARKER,
    LOCK_FILE,
    atomic_write,
    directory_lock,
    files_within,
    gfile,
    json_kind,
    read_text,
)

FLAGS_FILE = "flags.txt"
# Flags that decide where, how often or on which machine things are written, shown or run, but not the trained
# weights (evaluation uses no randomness and resuming is exact at any checkpoint): a resume may change them. Every
# other flag of this script, including flags added later, is part of the run's identity.
NOT_IDENTITY = frozenset({"model_dir", "log_every", "eval_every", "eval_steps", "checkpoint_every", "data_cache_dir",
                          "tpu"})
# The TrainConfig fields that decide which batches a step sees or what the weights are (the same rule as the
# flags': everything but NOT_IDENTITY); changing one in a model_dir that already holds a run would silently mix
# two runs, so `train` refuses it for Python callers as check_flags does on the command line.
RUN_IDENTITY = tuple(field.name for field in dataclasses.fields(TrainConfig) if field.name not in NOT_IDENTITY)
_DEFAULTS = TrainConfig()
# The `open_source` options that decide a source's splits and text, so its tokens: recorded in run_config.json and
# part of the run's identity as the flags are. The directories TFDS reads from and stores are prepared into are not.
SPLIT_OPTIONS = ("validation_fraction",)
TFDS_OPTIONS = ("tfds_train_split", "tfds_validation_split", "tfds_text_key")


# What a first start leaves in its --model_dir before its run_config.json, when it stops while preparing its data.
_FIRST_START_FILES = frozenset({LOCK_FILE, "data"})
# What only a run (one that got past its data) has written.
_RUN_FILES = frozenset({RUN_CONFIG, FLAGS_FILE, "checkpoints"})


def _check_run_directory(model_dir: str) -> None:
    """Raises ValueError unless `model_dir` may hold this run: new, empty, a run's, or what a first start left.

    Checked before the run's lock file is written there. An export or a token store is replaced or finished whole
    by its own command, deleting a run written into it; any other directory may hold files of the names a run
    writes (metrics.csv, model/), which it would overwrite.
    """
    if not model_dir:
        raise ValueError("--model_dir is empty; name the directory the run writes to.")
    files = gfile(model_dir)
    for marker, what in ((EXPORT_MARKER, "an export"), (MANIFEST, "a token store")):
        if files.exists(os.path.join(model_dir, marker)):
            raise ValueError(f"--model_dir={model_dir!r} holds {what} ({marker}), not a training run; use a new "
                             "--model_dir.")
    if files.isdir(model_dir):
        names = {name.rstrip("/") for name in files.listdir(model_dir) if not name.startswith(".")}
        if not names & _RUN_FILES and not names <= _FIRST_START_FILES:
            raise ValueError(f"--model_dir={model_dir!r} holds {sorted(names - _FIRST_START_FILES)[0]!r} but no "
                             "training run, so it was left untouched; use a new or empty --model_dir.")
    artifacts.check_saveable(model_dir)  # refused now, not after the run


def _same_json_type(saved, current) -> bool:
    """Whether two settings are of one JSON type (any two numbers are; null stands for any unset setting)."""
    if saved is None or current is None:
        return True
    if isinstance(saved, bool) or isinstance(current, bool):
        return type(saved) is type(current)
    return isinstance(saved, (int, float)) and isinstance(current, (int, float)) or type(saved) is type(current)


def _check_model_dir(model_dir: str, run_config: dict) -> None:
    """Raises ValueError if `model_dir` already holds a run or model that differs from `run_config`."""
    # Before the token store is open the vocabulary is unknown (fingerprint None): everything else is checked, so
    # a mistyped resume is refused before a store is prepared into model_dir.
    known = run_config["tokenizer_fingerprint"] is not None
    ignored = () if known else ("vocab_size", "tokenizer")
    path = os.path.join(model_dir, RUN_CONFIG)
    if gfile(path).exists(path):
        previous = read_run_config(path)
        # A field the earlier run's config predates had its default value there.
        before = {k: previous["train"].get(k, getattr(_DEFAULTS, k)) for k in RUN_IDENTITY}
        for section, saved_values in (("model", previous["model"]), ("train", before)):
            for k, v in run_config[section].items():
                if k in saved_values and not _same_json_type(saved_values[k], v):  # damage, not another setting
                    raise ValueError(
                        f"{path} is damaged: its {section} {k} is {json_kind(saved_values[k])} "
                        f"({saved_values[k]!r}), not {json_kind(v)}; restore it, or use a new --model_dir."
                    )
        changed = [f"{k}: {previous['model'].get(k)!r} -> {v!r}" for k, v in run_config["model"].items()
                   if previous["model"].get(k) != v and k not in ignored]
        changed += [f"{k}: {before[k]!r} -> {run_config['train'][k]!r}" for k in RUN_IDENTITY
                    if before[k] != run_config["train"][k] and k not in ignored]
        # A run_config.json written before the data options were recorded holds none: nothing to compare.
        recorded = previous.get("data")
        if recorded is not None:
            changed += [f"{k}: {recorded.get(k)!r} -> {run_config['data'].get(k)!r}"
                        for k in sorted(set(recorded) | set(run_config["data"]))
                        if recorded.get(k) != run_config["data"].get(k)]
        if known and previous.get("tokenizer_fingerprint") != run_config["tokenizer_fingerprint"]:
            changed.append("tokenizer vocabulary")
        # A store: dataset's store re-prepared from an edited corpus (text: sources are checked by _check_source).
        if known and previous.get("source_digest") not in (None, run_config["source_digest"]):
            changed.append("the source's text (the store was prepared from another version of it)")
        # A store: dataset's store prepared again with another split of the same text (a run_config.json written
        # before the store was recorded has no record: nothing to compare).
        recorded_store = previous.get("store")
        if known and recorded_store is not None:
            changed += [f"the store's {k}: {recorded_store.get(k)!r} -> {v!r}" for k, v in run_config["store"].items()
                        if recorded_store.get(k) != v]
        base_changed = previous.get("base_fingerprint") != run_config["base_fingerprint"]
        if base_changed:
            changed.append("the pretrained weights at init_from")
        if changed:
            # The weights under --init_from may have changed with the very flags the run started with.
            resume = "the original flags and base weights" if base_changed else "the original flags"
            raise ValueError(
                f"--model_dir={model_dir!r} holds a run with a different config ({'; '.join(changed)}); "
                f"use a new --model_dir, or {resume} to resume it."
            )
    saved_config = os.path.join(artifacts.saved_dir(model_dir), artifacts.CONFIG_FILE)
    if gfile(saved_config).exists(saved_config):
        saved = artifacts.read_config(model_dir).to_dict()
        if {k: v for k, v in saved.items() if k not in ignored} != {
                k: v for k, v in run_config["model"].items() if k not in ignored}:
            raise ValueError(
                f"--model_dir={model_dir!r} holds a saved model of a different config ({saved}); "
                "use a new --model_dir."
            )


def data_identity(train_config: TrainConfig, data_options: dict, pretrained: bool = False) -> dict:
    """The options among `data_options` that decide which tokens a run trains and validates on, defaults filled in.

    A `store:` dataset's splits and tokenizer are the store's, so it has none; the TFDS split options count only
    for a `tfds:` source, and `bpe_sample_bytes` only when a new BPE tokenizer is trained (not with a pretrained
    checkpoint's tokenizer). Paths (`cache_dir`, the TFDS directories) do not change the tokens.
    """
    if train_config.dataset.startswith(STORE_SCHEME):
        return {}
    names = SPLIT_OPTIONS + (TFDS_OPTIONS if train_config.dataset.startswith("tfds:") else ())
    defaults = inspect.signature(open_source).parameters
    identity = {name: data_options.get(name, defaults[name].default) for name in names}
    if train_config.tokenizer == "bpe" and not pretrained:
        identity["bpe_sample_bytes"] = data_options.get("bpe_sample_bytes", DEFAULT_BPE_SAMPLE_BYTES)
    return identity


def _run_config(model_config, train_config, strategy, tokenizer_fingerprint, pretrained, data, store=None) -> dict:
    request = {} if store is None else store.manifest["request"]
    # `store`: the source and options the store was prepared from, and the ids each split holds. A `store:`
    # dataset's store is only a path, so a resume checks it against these, and evaluate_lm splits that source as
    # the store did.
    return {"model": model_config.to_dict(), "train": train_config.to_dict(),
            "dataset_path": dataset_path(train_config.dataset), "data": data,
            "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "tokenizer_fingerprint": tokenizer_fingerprint,
            "base_fingerprint": None if pretrained is None else pretrained.fingerprint,
            "source_digest": request.get("source_digest"),
            "store": None if store is None else {
                "source": request.get("source"), "source_options": request.get("source_options"),
                "tokens": {split: store.num_tokens(split) for split in SPLITS}}}


def _check_source(model_dir: str, source: Source) -> None:
    """Raises ValueError if `source` reads files inside `model_dir` (the run's own files, its lock first of all, would
    be its text), or the run in `model_dir` was trained on another version of `source` (an edited file): checked
    before a store is prepared, so a resume neither tokenises the edited corpus nor mixes the two."""
    inside = files_within(source.files, model_dir)
    if inside:
        raise ValueError(
            f"--dataset={source.name} reads {len(inside)} file(s) inside --model_dir={model_dir} (such as "
            f"{inside[0]}), where the run writes; narrow the glob, or keep --model_dir outside it."
        )
    path = os.path.join(model_dir, RUN_CONFIG)
    if not gfile(path).exists(path):
        return
    recorded = read_run_config(path).get("source_digest")
    if recorded is not None and recorded != source.digest:
        raise ValueError(
            f"--model_dir={model_dir!r} holds a run trained on another version of {source.name!r} (a file's size or "
            "modification time differs); restore the source to resume it, or use a new --model_dir."
        )


def script_flags(flag_values: flags.FlagValues) -> dict[str, str]:
    """This script's flags (not absl's or TensorFlow's) as flagfile lines by name, defaults included: the run's
    settings, which `check_flags` compares with flags.txt. Flags left at None are omitted."""
    return {name: flag_values[name].serialize() for name in sorted(script_flag_names(flag_values))
            if flag_values[name].value is not None}


def given_flags(flag_values: flags.FlagValues) -> dict[str, str]:
    """The lines of `script_flags` that flags.txt keeps: the flags given (on the command line or in a flagfile),
    and those the script set itself (the warm-up `configs_from_flags` shortens for a short run).

    Only these: read back with `--flagfile`, a default would count as set, and the flags that refuse being set
    (--tokenizer with a `store:` dataset, --preset with --init_from picking the checkpoint's config) would refuse
    the rerun. absl marks a flag parsed or assigned as no longer using its default.
    """
    return {name: line for name, line in script_flags(flag_values).items()
            if not flag_values[name].using_default_value}


@functools.cache
def _defaults() -> flags.FlagValues:
    defaults = flags.FlagValues()
    define_train_flags(defaults)
    return defaults


def _flag_name(line: str, known: dict[str, str]) -> str:
    name = line[2:].split("=", 1)[0]
    # A false boolean is written `--noname`.
    return name[2:] if "=" not in line and name.startswith("no") and name[2:] in known else name


def check_flags(model_dir: str, lines: dict[str, str]) -> None:
    """Raises ValueError if `model_dir/flags.txt` records a value other than `lines` for an identity flag.

    A flag flags.txt leaves out had its default (flags.txt holds `given_flags`; one written before that holds
    every flag), so each side is compared with the defaults filled in.

    Args:
        model_dir: str, the run's directory (nothing happens if it holds no flags.txt yet).
        lines: `script_flags(FLAGS)` of this invocation.
    """
    path = os.path.join(model_dir, FLAGS_FILE)
    if not gfile(path).exists(path):
        return
    defaults = script_flags(_defaults())
    names = script_flag_names(_defaults())
    known = {**defaults, **lines}
    saved = dict(defaults)
    for number, line in enumerate(read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        # Every line this script writes is a flag of its own: anything else is damage, or a run of another version,
        # and would otherwise be reported as a resume with other flags.
        name = _flag_name(line, known)
        if not line.startswith("--") or name not in names:
            raise ValueError(
                f"{path} is damaged: line {number} ({line[:60]!r}) is not a flag of train_lm; restore it, or delete it "
                "and rerun (run_config.json still checks the run's configuration, and the rerun writes it again)."
            )
        saved[name] = line
    changed = [f"{saved.get(name, f'--{name} unset')} -> {known.get(name, f'--{name} unset')}"
               for name in sorted((set(saved) | set(known)) - NOT_IDENTITY) if saved.get(name) != known.get(name)]
    if changed:
        raise ValueError(
            f"--model_dir={model_dir!r} holds a run with other flags ({'; '.join(changed)}); resume it with "
            f"--flagfile={path}, or use a new --model_dir (with --init_from={model_dir} to go on from this run's "
            "weights once it has finished)."
        )


def _store_directory(train_config: TrainConfig, cache_dir: str, source: Source, options: dict, tokenizer=None) -> str:
    # One store per (source and its version, tokenizer, options): runs sharing a --data_cache_dir share the stores
    # they agree on, and an edited source gets a store of its own.
    identity = {"dataset": train_config.dataset, "source_digest": source.digest,
                "tokenizer": train_config.tokenizer if tokenizer is None else tokenizer.fingerprint,
                "bpe_vocab_size": train_config.bpe_vocab_size, **options}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{train_config.dataset}-{train_config.tokenizer}").strip("_")[:60]
    return os.path.join(cache_dir, f"{slug}-{key}")


def open_training_store(train_config: TrainConfig, model_dir: str, data_options: dict, chief: bool,
                        stack: contextlib.ExitStack, verbose: bool = True, tokenizer=None) -> TokenStore:
    """The store `train_config.dataset` names, or the one it is prepared into (reused if already there).

    `tokenizer` (a pretrained checkpoint's) tokenises the source instead of a new `train_config.tokenizer` one.

    A non-chief worker prepares its own copy in a temporary directory that `stack` deletes, so only the chief
    writes under `model_dir`; preparation is deterministic, so both copies hold the same ids.
    """
    options = dict(data_options)
    cache_dir = options.pop("cache_dir", None) or os.path.join(model_dir, "data")
    if train_config.dataset.startswith(STORE_SCHEME):
        return TokenStore(train_config.dataset[len(STORE_SCHEME):])
    bpe = {"bpe_vocab_size": train_config.bpe_vocab_size,
           "bpe_sample_bytes": options.pop("bpe_sample_bytes", DEFAULT_BPE_SAMPLE_BYTES)}
    if train_config.tokenizer != "bpe" or tokenizer is not None:
        bpe = {}
    source = open_source(train_config.dataset, **options)
    _check_source(model_dir, source)
    directory = _store_directory(train_config, cache_dir, source, {**options, **bpe}, tokenizer)
    if not chief:
        directory = os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="tf_lm_store_")), "store")
    files = gfile(cache_dir)
    new_cache = not files.exists(cache_dir)
    try:
        return prepare_store(source, directory, tokenizer=train_config.tokenizer if tokenizer is None else tokenizer,
                             progress=verbose, **bpe)
    except Exception:
        # prepare_store removes a store it could not prepare (bad text), not the cache directory made for it: a
        # failed first run leaves model_dir as it found it (the lock goes with its last other file). An interrupted
        # preparation keeps its shards, and another run's store in a shared cache is not touched.
        if new_cache and files.exists(cache_dir) and not files.listdir(cache_dir):
            files.rmtree(cache_dir)
        raise


def train(model_config: LMConfig, train_config: TrainConfig, model_dir: str, strategy_name: str = "auto",
          tpu: str | None = None, data_options: dict | None = None, verbose: bool = True,
          flagfile: str | None = None):
    """Opens (or prepares) the token store, checks `model_dir`, trains (resuming) and saves the model.

    With `train_config.init_from`, the model starts from that checkpoint (`tf_lm.pretrained`) and the data is
    tokenised with its tokenizer; `model_config` must be the checkpoint's, with at most a shorter `block_size` and
    another `dropout`.

    Args:
        model_config: `LMConfig`; without `init_from` its `vocab_size` is replaced by the store tokenizer's.
        train_config: `TrainConfig`. With a `store:` dataset, its `tokenizer` becomes the store's kind.
        model_dir: str. Output directory (see the module docstring).
        strategy_name, tpu: passed to `resolve_strategy`.
        data_options: dict of `open_source` options (`validation_fraction`, `tfds_data_dir`, `tfds_manual_dir`,
            ...), `bpe_sample_bytes`, and `cache_dir` (where sources are prepared into stores). Those that decide
            the tokens (`data_identity`) are recorded in run_config.json, and a resume must pass the same.
        verbose: bool. Progress bars and summary lines.
        flagfile: str or None. The run's flags (absl flagfile text, `given_flags`), kept as `model_dir/flags.txt` by
            the first run.

    Returns:
        `(trainer, tokenizer, result)` with `result` as `Trainer.fit` returns it.

    Raises:
        ValueError, FileNotFoundError: for bad data, config, strategy or model_dir (nothing written yet);
            `TrainingDiverged` (a ValueError) when the loss becomes NaN.
        TrainingInterrupted: on SIGTERM or SIGINT, after a checkpoint.
        OSError: if writing into `model_dir` fails (e.g. a full disk); the last complete checkpoint is kept.
    """
    from tf_lm.distribute import is_chief, resolve_strategy
    from tf_lm.pretrained import read_pretrained

    strategy = resolve_strategy(strategy_name, tpu)
    chief = is_chief(strategy)
    pretrained = None
    if train_config.init_from:
        pretrained = read_pretrained(train_config.init_from)
        kind = "char" if pretrained.tokenizer.is_char_level else "bpe"
        if train_config.tokenizer != kind:
            raise ValueError(
                f"`tokenizer={train_config.tokenizer!r}` contradicts the {kind} tokenizer of the checkpoint in "
                f"{train_config.init_from!r}; the data is tokenised with the checkpoint's, so leave it unset."
            )
        pretrained.state_for(model_config)  # refuses a contradicting config before anything is written
    _check_run_directory(model_dir)
    with contextlib.ExitStack() as stack:
        if chief:  # workers only read model_dir; the chief holds it for the whole cluster
            stack.enter_context(directory_lock(model_dir))
        data = data_identity(train_config, data_options or {}, pretrained is not None)
        _check_model_dir(model_dir, _run_config(model_config, train_config, strategy, None, pretrained, data))
        store = open_training_store(train_config, model_dir, data_options or {}, chief, stack, verbose,
                                    tokenizer=None if pretrained is None else pretrained.tokenizer)
        return _train(model_config, train_config, model_dir, strategy, chief, store, verbose, flagfile, pretrained,
                      data)


def _train(model_config, train_config, model_dir, strategy, chief, store, verbose, flagfile, pretrained, data):
    from tf_lm.data.pipeline import check_block_size, damaged_store_errors, lm_datasets
    from tf_lm.training import Trainer, measure_matmul_peak

    tokenizer = store.tokenizer
    if pretrained is not None and tokenizer.fingerprint != pretrained.tokenizer.fingerprint:
        raise ValueError(
            f"Token store {store.directory!r} was prepared with another tokenizer than the checkpoint in "
            f"{pretrained.directory!r}; prepare it with that tokenizer (prepare_data --tokenizer_dir) or use a text "
            "source."
        )
    tokenizer_dir = os.path.join(artifacts.saved_dir(model_dir), artifacts.TOKENIZER_DIR)
    if gfile(tokenizer_dir).isdir(tokenizer_dir) and load_tokenizer(tokenizer_dir).fingerprint != tokenizer.fingerprint:
        raise ValueError(
            f"Token store {store.directory!r} was prepared with another tokenizer than the model in "
            f"--model_dir={model_dir!r}; prepare it with --tokenizer_dir={tokenizer_dir}, or use a new --model_dir."
        )
    check_block_size(store, model_config.block_size)
    # The store compares a shard's checksum at its first read, so neither split is ever used damaged; the validation
    # split (read whole by every evaluation anyway) is compared now, so that damage there stops the run before it
    # writes anything rather than at its first evaluation.
    store.verify("validation")
    train_config = dataclasses.replace(train_config, tokenizer="char" if tokenizer.is_char_level else "bpe")
    if pretrained is None:
        model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    run_config = _run_config(model_config, train_config, strategy, tokenizer.fingerprint, pretrained, data, store)
    _check_model_dir(model_dir, run_config)

    peak = measure_matmul_peak() if verbose else None
    unit = "char" if tokenizer.is_char_level else "token"
    trainer = Trainer.from_config(model_config, train_config, strategy, model_dir,
                                  initial_state=None if pretrained is None else pretrained.state_for(model_config),
                                  peak_flops=peak, verbose=verbose, bits_unit=unit)
    if pretrained is not None:
        pretrained.release_weights()  # the model holds the weights now; the host copy would stay resident all run
    if chief:
        # Written by the first run only: a resume has just been checked to be the same run.
        files = gfile(model_dir)
        if not files.exists(os.path.join(model_dir, RUN_CONFIG)):
            atomic_write(os.path.join(model_dir, RUN_CONFIG), json.dumps(run_config, indent=2))
        if flagfile is not None and not files.exists(os.path.join(model_dir, FLAGS_FILE)):
            atomic_write(os.path.join(model_dir, FLAGS_FILE), flagfile)
    if verbose:
        print(f"{model_config}\n{train_config}\nstrategy: {type(strategy).__name__} with "
              f"{strategy.num_replicas_in_sync} replica(s); tokenizer: {train_config.tokenizer}, "
              f"{tokenizer.vocab_size} ids; non-embedding parameters: {model_config.non_embedding_params():,}",
              flush=True)
        sizes = trainer.parameter_report()
        print(f"trainable parameters: {sizes['trainable']:,} of {sizes['total']:,} "
              f"({100 * sizes['trainable'] / sizes['total']:.2f}%); optimizer state: "
              f"{sizes['optimizer_bytes'] / 2**20:.2f} MiB", flush=True)

    def datasets(start_step, context):
        return lm_datasets(store, model_config.block_size, train_config.batch_size, seed=train_config.seed,
                           start_step=start_step, input_context=context)

    validation_sets = {}

    def validation(context):
        # One validation pipeline per input shard, built once: evaluation runs every --eval_every steps.
        key = None if context is None else (context.input_pipeline_id, context.num_input_pipelines)
        if key not in validation_sets:
            validation_sets[key] = datasets(0, context)[1]
        return validation_sets[key]

    with damaged_store_errors():
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
            print(f"saved {os.path.join(artifacts.saved_dir(model_dir), artifacts.MODEL_FILE)}", flush=True)
    return trainer, tokenizer, result


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-checkpoint INFO lines would bury the progress bar
    values = flags.FLAGS
    with one_line_errors():
        model_config, train_config = configs_from_flags(values)
        options = source_options(values)
        data_options = {**options, "bpe_sample_bytes": bpe_sample_bytes(values), "cache_dir": values.data_cache_dir}
        check_flags(values.model_dir, script_flags(values))  # before any data is read: a refused resume costs nothing
        # `train` checks these again; here only to refuse a bad start before TensorFlow loads.
        _check_run_directory(values.model_dir)
        if train_config.dataset.startswith(STORE_SCHEME):
            TokenStore(train_config.dataset[len(STORE_SCHEME):])
        elif train_config.dataset.startswith("text:"):
            _check_source(values.model_dir, open_source(train_config.dataset, **options))
    # TensorFlow loads only now, so bad flags, a refused resume, a model_dir that is not a run's, a bad --init_from
    # and a missing corpus or store are answered at once; a Ctrl-C while it loads is run_script's plain "stopped",
    # since nothing has started that a rerun would resume.
    from tf_lm.training import TrainingInterrupted

    with reported_stops(TrainingInterrupted), one_line_errors():
        train(model_config, train_config, values.model_dir, values.strategy, values.tpu, data_options,
              flagfile="".join(line + "\n" for line in given_flags(values).values()))


if __name__ == "__main__":
    define_train_flags()
    flags.mark_flags_as_required(["model_dir"])
    run_script(main)
