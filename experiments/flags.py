"""Shared absl flags, their `--help` groups, and `configs_from_flags`, the one place flags map onto `LMConfig`
and `TrainConfig`.

Every flag is optional; a flag the user did not set leaves the preset's (or `TrainConfig`'s) value alone.
A script defines its flags inside `flag_group(title)` blocks and starts with `run_script(main)` instead of
`app.run(main)`: its `--help` then lists its own flags under those titles, with their defaults, and exits 0.
Bad input ends a script in one line through `one_line_errors`: tf_lm's errors name arguments, in backticks where
they say what to pass (`max_length`), and the script's user reads the ones that are its flags as flags. A run
stopped by a signal ends through `reported_stops`: one `stopped:` line and the shell's exit status for the signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import sys

from absl import app, flags

from tf_lm.configs import PRECISIONS, PRESETS, STRATEGIES, LMConfig, TrainConfig
from tf_lm.data.sources import STORE_SCHEME
from tf_lm.data.store import DEFAULT_BPE_SAMPLE_BYTES
from tf_lm.data.tokenizers import DEFAULT_BPE_VOCAB_SIZE
from tf_lm.fileio import check_json_types, normalise_path, read_json
from tf_lm.pretrained import pretrained_config

_TRAIN = TrainConfig()
# Written by experiments.train_lm into --model_dir: the resolved model, training and data config of the run.
RUN_CONFIG = "run_config.json"
# Model fields a flag may override; vocab_size comes from the tokenizer, block_size from --block_size.
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "dropout")
TRAIN_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))
# The --help heading of a script's flag defined outside any `flag_group` (tests/test_help.py keeps it empty).
UNGROUPED = "ungrouped (define these inside a flag_group)"
_GROUP_OF: dict[flags.Flag, str] = {}


def _is_object_or_null(value) -> bool:
    return value is None or isinstance(value, dict)


def _is_text_or_null(value) -> bool:
    return value is None or isinstance(value, str)


# The fields of a run_config.json that a resume and evaluate_lm read beyond its model and train settings (which a
# resume compares one by one): of another type, reading them failed in an AttributeError or a TypeError.
_RUN_CONFIG_TYPES = {
    "dataset_path": (lambda value: isinstance(value, str), "a dataset (a string)"),
    "data": (_is_object_or_null, "an object of data options or null"),
    "store": (_is_object_or_null, "an object or null"),
    **{name: (_is_text_or_null, "a string or null")
       for name in ("tokenizer_fingerprint", "base_fingerprint", "source_digest")},
}
_RUN_STORE_TYPES = {"source": (_is_text_or_null, "a source (a string) or null"),
                    "source_options": (_is_object_or_null, "an object of options or null"),
                    "tokens": (_is_object_or_null, "an object of token counts or null")}


def read_run_config(path: str) -> dict:
    """The run_config.json at `path`, as experiments.train_lm wrote it.

    Raises:
        OSError: if it cannot be read.
        ValueError: if it is damaged: not JSON, not an object with model and train settings, or a field its readers
            take holds a value of another type (naming it).
    """
    run = read_json(path)
    if not (isinstance(run, dict) and all(isinstance(run.get(k), dict) for k in ("model", "train"))):
        raise ValueError(f"{path} is damaged: it is not the run config training writes (an object with model and "
                         "train settings); restore it, or use a new --model_dir.")
    check_json_types(path, run, _RUN_CONFIG_TYPES)
    check_json_types(path, run["train"], {"dataset": _RUN_CONFIG_TYPES["dataset_path"]}, within="train")
    check_json_types(path, run.get("store") or {}, _RUN_STORE_TYPES, within="store")
    return run


@contextlib.contextmanager
def flag_group(title: str, flag_values: flags.FlagValues = flags.FLAGS):
    """Lists the flags defined inside the `with` block under `title` in `--help`, in the order defined."""
    before = set(flag_values)
    yield
    for name in flag_values:
        if name not in before:
            _GROUP_OF[flag_values[name]] = title


def is_script_flag(module_name: str) -> bool:
    # absl files a flag under its defining module's name, and under the script's path (sys.argv[0]) when the
    # script itself (`__main__`) defines it; absl's and TensorFlow's own flags come from neither.
    return module_name.startswith("experiments") or module_name == sys.argv[0]


def _default_text(flag) -> str:
    if flag.default_as_str is None:  # unset by default: the help text says what that means
        return ""
    # absl keeps the default as a repr ("'12'"); drop the quotes unless they carry whitespace or an escape.
    value = flag.default_as_str[1:-1]
    return "=" + (value if value and not any(c.isspace() or c == "\\" for c in value) else flag.default_as_str)


def script_flag_names(flag_values: flags.FlagValues) -> set[str]:
    """The names of the running script's own flags (not absl's or TensorFlow's)."""
    return {flag.name for module, module_flags in flag_values.flags_by_module_dict().items()
            if is_script_flag(module) for flag in module_flags}


def script_help(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The script's docstring, then each of its flags (`--name=default` and its help) under its group's title."""
    own = script_flag_names(flag_values)
    groups: dict[str, list[str]] = {}
    for name in flag_values:  # definition order
        if name in own:
            flag = flag_values[name]
            boolean = "[no]" if isinstance(flag, flags.BooleanFlag) else ""
            lines = groups.setdefault(_GROUP_OF.get(flag, UNGROUPED), [])
            lines.append(f"  --{boolean}{name}{_default_text(flag)}")
            lines.append(flags.text_wrap(flag.help, length=100, indent="      ", firstline_indent="      "))
    doc = (sys.modules["__main__"].__doc__ or "").strip()
    sections = [f"{title}:\n" + "\n".join(lines) for title, lines in groups.items()]
    return "\n\n".join([doc, *sections]) + "\n"


class _HelpFlag(app.HelpFlag):
    """--help (-?, --helpshort): the script's own flags by group, on stdout, exit 0 (absl's lists only flags
    defined in `__main__` and exits 1). --helpfull stays absl's: every flag, TensorFlow's too."""

    def __init__(self, name: str, short_name: str | None):
        self.NAME, self.SHORT_NAME = name, short_name
        super().__init__()

    def parse(self, arg):
        if self._parse(arg):
            sys.stdout.write(script_help())
            sys.stdout.flush()
            sys.exit(0)


# How tf_lm's errors name an argument: in backticks, alone or with a value (`max_length`, `tpu=<name>`).
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)(=[^`]*)?`")


# tf_lm arguments that the scripts take as a flag of another name: a draft model is given by its directory.
_FLAG_OF_ARGUMENT = {"draft_model": "draft_model_dir"}


def in_flag_terms(message: str, flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """`message` with each backticked argument that is one of the script's flags (or that the script takes as its
    flag in `_FLAG_OF_ARGUMENT`) written as that flag.

    >>> in_flag_terms("max_length 600 exceeds 512 positions; lower `max_length`.")  # doctest: +SKIP
    'max_length 600 exceeds 512 positions; lower --max_length.'
    """
    own = script_flag_names(flag_values)

    def as_flag(match):
        name = _FLAG_OF_ARGUMENT.get(match[1], match[1])
        return f"--{name}{match[2] or ''}" if name in own else match[0]

    return _ARGUMENT.sub(as_flag, message)


@contextlib.contextmanager
def one_line_errors(errors: tuple[type[Exception], ...] = (ValueError, OSError)):
    """Inside the block, an exception of `errors` (bad input: a bad value, a missing or unwritable path, a full
    disk), or TensorFlow running out of memory (a batch or model too large for the device), ends the script with
    `error: <its message in flag terms>` and exit status 1, not a traceback."""
    try:
        yield
    except errors as error:
        raise SystemExit(f"error: {in_flag_terms(str(error))}") from None
    except Exception as error:
        if (line := _out_of_memory(error)) is None:
            raise
        raise SystemExit(f"error: {in_flag_terms(line)}") from None


def _out_of_memory(error: Exception) -> str | None:
    """One line for TensorFlow's `ResourceExhaustedError` (its message runs over several lines of graph node
    names), or None for any other error. TensorFlow is not imported for it: only a process that loaded it can
    have raised one."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None or not isinstance(error, tensorflow.errors.ResourceExhaustedError):
        return None
    tensor = re.search(r"OOM when allocating tensor with shape\[([^\]]*)\] and type (\w+) on (\S+)", error.message)
    what = (f"a tensor of shape [{tensor[1]}] ({tensor[2]}) does not fit on {tensor[3].rpartition('device:')[2]}"
            if tensor else " ".join(error.message.split())[:300])
    return f"Out of memory: {what}; lower `batch_size`, or use a smaller model or context."


@contextlib.contextmanager
def reported_stops(interrupted: type[Exception]):
    """Inside the block, a run stopped by a signal ends the script with `stopped: <why>` on stderr and the shell's
    exit status for the signal (130 for Ctrl-C, 143 for SIGTERM), not a traceback.

    `interrupted` is `tf_lm.training.TrainingInterrupted` (raised after the run's checkpoint; its `exit_code` says
    which signal). It is passed in so that this module does not load TensorFlow. A Ctrl-C before training starts,
    or a second one during it, is a `KeyboardInterrupt`, and a SIGTERM before it starts is `run_script`'s
    `_Terminated`: both end the same way.
    """
    try:
        yield
    except interrupted as error:
        print(f"stopped: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except (KeyboardInterrupt, _Terminated) as stop:
        why, signum = _signal_stop(stop)
        print(f"stopped: {why}; rerunning the same command resumes from the last checkpoint.", file=sys.stderr)
        raise SystemExit(128 + signum) from None


class _Terminated(BaseException):
    """SIGTERM outside a training loop (which checkpoints first): unwinds like Ctrl-C, so `finally` blocks remove
    what a write left half done (a staging directory, a temporary file), where the default action would just end
    the process."""


def _terminate(signum, frame):
    del frame
    raise _Terminated(signum)


def _signal_stop(stop: KeyboardInterrupt | _Terminated) -> tuple[str, int]:
    """`(why, signal)` of a stop by Ctrl-C or SIGTERM, for its `stopped:` line and exit status."""
    return ("terminated", signal.SIGTERM) if isinstance(stop, _Terminated) else ("interrupted", signal.SIGINT)


def run_script(main, takes_arguments: bool = False) -> None:
    """`app.run(main)` with `--help` replaced by `script_help` (see `_HelpFlag`), and a bad flag or argument
    ending the script as any other bad input does: one `error:` line, exit 1 (absl prints the error, then a hint
    to run --helpshort, or the whole usage).

    Args:
        main: the script's `main(argv)`.
        takes_arguments: bool, default False. Whether `main` reads positional arguments (`argv[1:]`); if not,
            any is refused rather than ignored (a mistyped flag, such as a missing `--`, would pass unnoticed).
    """
    app.define_help_flags()
    for name, short_name in (("help", "?"), ("helpshort", None)):
        for registered in (name, short_name):
            if registered is not None:
                delattr(flags.FLAGS, registered)
        flags.DEFINE_flag(_HelpFlag(name, short_name), module_name=app.__name__)

    def parse_flags(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            raise SystemExit(f"error: {error}") from None

    def main_with_usage_errors(argv):
        if not takes_arguments and len(argv) > 1:
            raise SystemExit(f"error: Unexpected arguments {argv[1:]}; every option is a --flag.")
        try:
            return main(argv)
        except app.UsageError as error:
            raise SystemExit(f"error: {error}") from None
        except (KeyboardInterrupt, _Terminated) as stop:  # no stop of its own to report (train_lm's say how to resume)
            why, signum = _signal_stop(stop)
            print(f"stopped: {why}.", file=sys.stderr)
            raise SystemExit(128 + signum) from None

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # one the process was started ignoring stays ignored
        signal.signal(signal.SIGTERM, _terminate)
    app.run(main_with_usage_errors, flags_parser=parse_flags)


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS, stores: bool = True) -> None:
    """--dataset and the options of `tf_lm.data.open_source`, shared by training, evaluation and preparation
    (which, with `stores=False`, takes no token store: it writes one)."""
    sources = "builtin:pydoc, text:<file or glob>, " + (
        "tfds:<name>, or store:<dir> (a token store written by experiments.prepare_data)." if stores else
        "or tfds:<name>.")
    with flag_group("data", flag_values):
        flags.DEFINE_string("dataset", _TRAIN.dataset, f"Text source: {sources}", flag_values=flag_values)
        flags.DEFINE_float("validation_fraction", 0.1, "Share of the documents (of the text, for a single document) "
                           "held out for validation, when the source has no validation split of its own.",
                           flag_values=flag_values)
        flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (where prepared datasets live).",
            flag_values=flag_values)
        flags.DEFINE_string("tfds_manual_dir", None, "TFDS manual_dir holding the dataset's downloaded files.",
            flag_values=flag_values)


def source_options(flag_values: flags.FlagValues) -> dict:
    """The `open_source` options among the parsed data flags."""
    return {"validation_fraction": flag_values.validation_fraction, "tfds_data_dir": flag_values.tfds_data_dir,
            "tfds_manual_dir": flag_values.tfds_manual_dir}


def dataset_path(dataset: str) -> str:
    """A --dataset value in the spelling that names the same data from any directory: a `text:` or `store:` path
    made absolute (`~`, `//` and symlinks resolved); any other dataset as it is.

    Example:
    >>> dataset_path("text:/data//notes.txt")
    'text:/data/notes.txt'
    """
    scheme, colon, path = dataset.partition(":")
    if colon and scheme in ("text", STORE_SCHEME.rstrip(":")):
        return f"{scheme}:{normalise_path(os.path.expanduser(path))}"
    return dataset


def bpe_sample_bytes(flag_values: flags.FlagValues) -> int:
    """--bpe_sample_mb in bytes.

    Raises:
        ValueError: if it is less than one byte, or not finite.
    """
    if not 1e-6 <= flag_values.bpe_sample_mb < math.inf:  # NaN too
        raise ValueError(f"--bpe_sample_mb must be at least 0.000001 (one byte). Received: "
                         f"--bpe_sample_mb={flag_values.bpe_sample_mb}")
    return int(flag_values.bpe_sample_mb * 1e6)


def define_tokenizer_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The tokenizer a token store is prepared with, shared by train_lm and prepare_data."""
    with flag_group("data", flag_values):
        flags.DEFINE_enum("tokenizer", _TRAIN.tokenizer, ["char", "bpe"], "Tokenizer built from the training text.",
            flag_values=flag_values)
        flags.DEFINE_integer("bpe_vocab_size", None, "BPE vocabulary size (only with --tokenizer=bpe; unset: "
                             f"{DEFAULT_BPE_VOCAB_SIZE}).", flag_values=flag_values)
        flags.DEFINE_float("bpe_sample_mb", DEFAULT_BPE_SAMPLE_BYTES / 1e6, "BPE is trained on the first this many "
                           "MB of the training text, never the whole corpus.", flag_values=flag_values)


def define_trained_model_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--model_dir of the scripts that read a trained language model (evaluate, generate, export)."""
    flags.DEFINE_string("model_dir", None, "A --model_dir written by experiments.train_lm (its model/ holds the "
                        "model).", flag_values=flag_values)


def define_strategy_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """--strategy and --tpu, the arguments of `tf_lm.distribute.resolve_strategy`, for every script that trains."""
    flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "tf.distribute strategy.", flag_values=flag_values)
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address (with --strategy=tpu or auto).",
                        flag_values=flag_values)


def define_train_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The flags of `train_lm`, in --help's groups: model, data, optimisation, run, distribution, transfer."""
    with flag_group("model", flag_values):
        flags.DEFINE_enum("preset", "nano", sorted(PRESETS), "Model preset; the flags below override its fields.",
            flag_values=flag_values)
        flags.DEFINE_integer("n_layer", None, "Transformer blocks (default: the preset's).", flag_values=flag_values)
        flags.DEFINE_integer("n_head", None, "Attention heads (default: the preset's).", flag_values=flag_values)
        flags.DEFINE_integer("n_embd", None, "Residual width (default: the preset's).", flag_values=flag_values)
        flags.DEFINE_float("dropout", None, "Dropout rate (default: the preset's).", flag_values=flag_values)
        flags.DEFINE_integer("block_size", None, "Context length trained on (default and maximum: the preset's).",
            flag_values=flag_values)
    define_data_flags(flag_values)
    define_tokenizer_flags(flag_values)
    with flag_group("data", flag_values):
        flags.DEFINE_string("data_cache_dir", None, "Where text:, tfds: and builtin: sources are prepared into "
                            "token stores, reused on resume (default: <model_dir>/data).", flag_values=flag_values)
    with flag_group("optimisation", flag_values):
        flags.DEFINE_integer("batch_size", _TRAIN.batch_size, "Global batch size (split over the replicas).",
            flag_values=flag_values)
        flags.DEFINE_integer("steps", _TRAIN.steps, "Optimizer steps in the whole run.", flag_values=flag_values)
        flags.DEFINE_float("learning_rate", _TRAIN.learning_rate, "Peak learning rate.", flag_values=flag_values)
        flags.DEFINE_float("min_learning_rate", _TRAIN.min_learning_rate, "Floor of the cosine decay.",
            flag_values=flag_values)
        flags.DEFINE_integer("warmup_steps", _TRAIN.warmup_steps, "Linear warm-up steps.", flag_values=flag_values)
        flags.DEFINE_float("weight_decay", _TRAIN.weight_decay, "AdamW weight decay (matrices only).",
            flag_values=flag_values)
        flags.DEFINE_float("beta1", _TRAIN.beta1, "AdamW beta1.", flag_values=flag_values)
        flags.DEFINE_float("beta2", _TRAIN.beta2, "AdamW beta2.", flag_values=flag_values)
        flags.DEFINE_float("grad_clip", _TRAIN.grad_clip, "Clip the global gradient norm to this (0: off).",
            flag_values=flag_values)
    with flag_group("run", flag_values):
        flags.DEFINE_string("model_dir", None, "Output directory: model, checkpoints, metrics, logs. Rerun to resume.",
            flag_values=flag_values)
        flags.DEFINE_integer("eval_every", _TRAIN.eval_every, "Validate every this many steps.",
            flag_values=flag_values)
        flags.DEFINE_integer("eval_steps", _TRAIN.eval_steps, "Validation batches per evaluation.",
            flag_values=flag_values)
        flags.DEFINE_integer("checkpoint_every", _TRAIN.checkpoint_every, "Checkpoint every this many steps.",
            flag_values=flag_values)
        flags.DEFINE_integer("log_every", _TRAIN.log_every, "Write a metrics row every this many steps.",
            flag_values=flag_values)
        flags.DEFINE_integer("seed", _TRAIN.seed, "Seed of the initialisation, dropout and training windows.",
            flag_values=flag_values)
    with flag_group("distribution", flag_values):
        define_strategy_flags(flag_values)
        flags.DEFINE_enum("precision", _TRAIN.precision, list(PRECISIONS), "Compute precision.",
            flag_values=flag_values)
    define_transfer_flags(flag_values)


def define_transfer_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Fine-tuning from a pretrained checkpoint, fully or with LoRA (the --help group "transfer")."""
    with flag_group("transfer", flag_values):
        flags.DEFINE_string("init_from", None, "Start from this checkpoint: a tf_lm model directory or an HF GPT-2 "
                            "directory (config.json + model.safetensors + tokenizer files). Its architecture and "
                            "tokenizer are used; --block_size may shrink the context, --dropout may change.",
                            flag_values=flag_values)
        flags.DEFINE_integer("lora_rank", _TRAIN.lora_rank, "With --init_from: train only rank-r LoRA factors of "
                             "the attention and MLP projections (0: train every weight).", flag_values=flag_values)
        flags.DEFINE_float("lora_alpha", None, "LoRA scale numerator: updates are scaled by alpha / rank "
                           "(default: alpha = rank).", flag_values=flag_values)
        flags.DEFINE_bool("lora_train_norms", _TRAIN.lora_train_norms, "With --lora_rank: also train the "
                          "LayerNorms.", flag_values=flag_values)
        flags.DEFINE_bool("lora_embeddings", _TRAIN.lora_embeddings, "With --lora_rank: also give the token "
                          "embedding table (tied to the output head) rank-r LoRA factors.", flag_values=flag_values)


def configs_from_flags(flag_values: flags.FlagValues) -> tuple[LMConfig, TrainConfig]:
    """Maps the parsed flags onto `(LMConfig, TrainConfig)`: the preset first, then only the flags the user set.

    The returned `LMConfig` keeps the preset's `vocab_size`; the caller replaces it with the tokenizer's. With
    --init_from, the checkpoint's config (and tokenizer kind) stands in for the preset's, unless --preset is set:
    `train` then refuses whatever contradicts the checkpoint. A run shorter than the default warm-up (--steps=10,
    say) warms up for `steps - 1` steps instead, sets the flag to it (flags.txt keeps the flags given and those
    set here, so it reruns the run), and prints one line saying so; a --warmup_steps the user set is never changed.

    Args:
        flag_values: parsed `absl.flags.FLAGS` after `define_train_flags()`.

    Returns:
        `(model_config, train_config)`.

    Raises:
        ValueError: for --block_size beyond the preset's context, --preset or --bpe_vocab_size with --init_from, a
            flag that prepares data with a `store:` dataset, or any out-of-range value.
        FileNotFoundError: if --init_from does not exist.

    Example:
    >>> model_config, train_config = configs_from_flags(flags.FLAGS)  # doctest: +SKIP
    """
    if flag_values.dataset.startswith(STORE_SCHEME):
        preparing = [f"--{name}" for name in ("validation_fraction", "tfds_data_dir", "tfds_manual_dir", "tokenizer",
                                              "bpe_vocab_size", "bpe_sample_mb", "data_cache_dir")
                     if flag_values[name].present]
        if preparing:
            raise ValueError(f"--dataset={flag_values.dataset} is prepared already (its splits and tokenizer are "
                             f"fixed); drop {', '.join(preparing)}.")
    train_values = {name: flag_values[name].value for name in TRAIN_FIELDS if flag_values[name].present}
    steps = train_values.get("steps", _TRAIN.steps)
    if "warmup_steps" not in train_values and _TRAIN.warmup_steps >= steps > 0:
        train_values["warmup_steps"] = flag_values.warmup_steps = steps - 1  # so flags.txt reruns this warm-up
        print(f"note: the default --warmup_steps={_TRAIN.warmup_steps} does not fit --steps={steps}; warming up "
              f"for {steps - 1} steps (set --warmup_steps to choose)", flush=True)
    overrides = {name: flag_values[name].value for name in MODEL_FIELDS if flag_values[name].present}
    if flag_values.init_from:
        if flag_values["bpe_vocab_size"].present:
            raise ValueError("--bpe_vocab_size does not apply with --init_from: the tokenizer is the checkpoint's.")
        base, tokenizer = pretrained_config(flag_values.init_from)
        if flag_values["preset"].present:  # its placeholder vocabulary would be listed among the contradictions
            raise ValueError("--preset does not apply with --init_from: the architecture is the checkpoint's.")
        train_values.setdefault("tokenizer", tokenizer)  # a different --tokenizer is refused by `train`
        if flag_values["block_size"].present:
            overrides["block_size"] = flag_values.block_size  # `train` refuses one beyond the checkpoint's
        return dataclasses.replace(base, **overrides), TrainConfig(**train_values)
    bpe_only = [f"--{name}" for name in ("bpe_vocab_size", "bpe_sample_mb") if flag_values[name].present]
    if bpe_only and flag_values.tokenizer != "bpe":
        raise ValueError(f"{', '.join(bpe_only)} only apply with --tokenizer=bpe. Received: "
                         f"--tokenizer={flag_values.tokenizer}")
    preset = PRESETS[flag_values.preset]
    if flag_values["block_size"].present:
        block_size = flag_values.block_size
        if block_size > preset.block_size:
            raise ValueError(
                f"--block_size={block_size} exceeds the {preset.block_size} positions of --preset="
                f"{flag_values.preset}; use a block size <= {preset.block_size} or a preset with a longer context."
            )
        overrides["block_size"] = block_size
    return LMConfig.preset(flag_values.preset, **overrides), TrainConfig(**train_values)
