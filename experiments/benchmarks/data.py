"""Data: token-store preparation beside a plain HF `tokenizers` loop, flat memory, and the pipeline beside training.

Preparation: a 1 GB and a 100 MB text corpus (CPython's own sources and its pydoc text, cycled to size in 8 MB
files, generated under /tmp on first use, never downloaded) go through `experiments.prepare_data` with BPE and
with the char tokenizer, each in a child process whose peak RSS /usr/bin/time reports (in MiB). The peer, in the same
run on the same files, is the streaming loop the issue measured: BPE trained on a 20 MB sample, then
`encode_batch` over 1 MB chunks of lines, ids appended to a uint16 file.

Reading: windows of `block_size + 1 = 1025` ids (GPT-2's context) are cut from a 10 MB and from the 1 GB store
in child processes; their peak RSS must not differ by 100 MiB, and the pipeline (batch 8) must yield >= 20x the
tokens/s a `gpt2` training step (XLA, AdamW) consumes at batch 1 (a batch-8 step needs ~16 GB). The char-level
Tiny Shakespeare rows keep the earlier comparison against a `char-small` step and nanoGPT's per-character encoding
loop.

`--quick` shrinks the corpora (2 MB and 0.2 MB) and the model (`nano`), to smoke-test the section itself.
"""

import json
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from experiments.benchmarks.common import SHARED_DATA, Row, best_rate, race, run_with_peak_rss
from experiments.benchmarks.model import train_step
from tf_lm import LMConfig, TransformerLM
from tf_lm.data import TokenStore, lm_datasets, prepare_store

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
DATA_FILES = (SHAKESPEARE,)
BLOCK_SIZE, PIPELINE_BATCH, TRAIN_BATCH = 256, 64, 8
REPO = Path(__file__).resolve().parents[2]
CORPORA = Path(tempfile.gettempdir()) / "tf_lm_bench_corpus"
FILE_BYTES = 8 << 20
BPE_VOCAB, SAMPLE_MB = 4096, 20

# The peer: HF tokenizers streaming a corpus into a uint16 file (argv: glob, output file, vocab, sample MB).
PEER_LOOP = r"""
import glob, sys
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

paths, output, vocab, sample = sorted(glob.glob(sys.argv[1])), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def chunks():
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines, size = [], 0
            for line in f:
                lines.append(line)
                size += len(line)
                if size >= 1 << 20:
                    yield "".join(lines)
                    lines, size = [], 0
            if lines:
                yield "".join(lines)

def first(megabytes):
    taken = 0
    for chunk in chunks():
        if taken >= megabytes * 1e6:
            return
        taken += len(chunk)
        yield chunk

tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
tokenizer.train_from_iterator(first(sample), trainers.BpeTrainer(
    vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
with open(output, "wb") as f:
    batch = []
    for chunk in chunks():
        batch.append(chunk)
        if len(batch) == 8:
            for encoding in tokenizer.encode_batch(batch):
                np.asarray(encoding.ids, dtype=np.uint16).tofile(f)
            batch = []
    for encoding in tokenizer.encode_batch(batch):
        np.asarray(encoding.ids, dtype=np.uint16).tofile(f)
"""

# Cuts `steps` training batches of GPT-2-sized windows from a store (argv: store, block, batch, steps).
READ_WINDOWS = r"""
import json, resource, sys, time
from tf_lm.data import lm_datasets
block, batch, steps = (int(a) for a in sys.argv[2:5])
batches = iter(lm_datasets(sys.argv[1], block, batch, seed=0)[0])
next(batches)
start = time.perf_counter()
for _ in range(steps):
    next(batches)
rate = steps * batch * block / (time.perf_counter() - start)
del batches  # before interpreter shutdown, when its prefetch thread could no longer take the GIL to finish
print(json.dumps({"tokens_per_second": rate, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def corpus(size: int) -> Path:
    """A directory of UTF-8 files (CPython's sources and pydoc text, cycled) totalling `size` bytes; made once."""
    directory = CORPORA / str(size)
    if (directory / ".complete").is_file():
        return directory
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [topics[key] for key in sorted(topics)]
    for path in sorted(stdlib.rglob("*.py")):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):  # a few test files are deliberately not UTF-8
            continue
    directory.mkdir(parents=True, exist_ok=True)
    written, index, part = 0, 0, 0
    while written < size:
        parts = []
        while sum(len(p) for p in parts) < min(FILE_BYTES, size - written):
            parts.append(texts[index % len(texts)])
            index += 1
        data = "".join(parts).encode("utf-8")[:size - written]
        data = data.decode("utf-8", "ignore").encode("utf-8")  # a cut inside a character is dropped
        (directory / f"part{part:04d}.txt").write_bytes(data)
        written += len(data)
        part += 1
    (directory / ".complete").write_text(str(size))
    return directory


def measured(args: list[str]) -> tuple[float, float, str]:
    """Runs `args` from the repo root; returns (wall seconds, peak RSS in MiB, stdout) of that child alone."""
    child, wall, peak_mib = run_with_peak_rss(args, cwd=REPO, capture_output=True, text=True, errors="replace",
                                              env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    if child.returncode:
        raise RuntimeError(f"{args[:4]} failed: {child.stderr[-2000:]}")
    return wall, peak_mib, child.stdout


def prepare(directory: Path, output: Path, tokenizer: str) -> tuple[float, float]:
    bpe = [f"--bpe_vocab_size={BPE_VOCAB}", f"--bpe_sample_mb={SAMPLE_MB}"] if tokenizer == "bpe" else []
    wall, rss, _ = measured([sys.executable, "-m", "experiments.prepare_data", f"--dataset=text:{directory}/*.txt",
                             f"--tokenizer={tokenizer}", *bpe, f"--output_dir={output}"])
    return wall, rss


def read_windows(store: Path, block: int, batch: int, steps: int) -> dict:
    _, _, out = measured([sys.executable, "-c", READ_WINDOWS, str(store), str(block), str(batch), str(steps)])
    return json.loads(out.strip().splitlines()[-1])


def preparation_rows(quick: bool, scratch: Path) -> tuple[list[Row], Path, Path]:
    # Quick: the small corpus doubles as the small store, and each child costs a TensorFlow start-up.
    large, small, tiny = (2_000_000, 200_000, 200_000) if quick else (1_000_000_000, 100_000_000, 10_000_000)
    label = f"{large / 1e9:g} GB" if large >= 1e9 else f"{large / 1e6:g} MB"
    big = corpus(large)
    ours_wall, ours_rss = prepare(big, scratch / "large-bpe", "bpe")
    peer_wall, peer_rss, _ = measured([sys.executable, "-c", PEER_LOOP, f"{big}/*.txt", str(scratch / "peer.bin"),
                                       str(BPE_VOCAB), str(SAMPLE_MB)])
    _, small_rss = prepare(corpus(small), scratch / "small-bpe", "bpe")
    char_wall, char_rss = prepare(big, scratch / "large-char", "char")
    if tiny != small:
        prepare(corpus(tiny), scratch / "tiny-bpe", "bpe")
    _, import_rss, _ = measured([sys.executable, "-c", "import experiments.prepare_data"])
    megabytes = large / 1e6
    store = TokenStore(str(scratch / "large-bpe"))
    tokens = store.num_tokens("train") + store.num_tokens("validation")
    rows = [
        Row("data", f"prepare_data {label} text, BPE {BPE_VOCAB}: wall", "s", ours_wall, peer_wall,
            "HF tokenizers streaming loop", target="<= 1.25x",
            notes=f"{megabytes / ours_wall:.2f} vs {megabytes / peer_wall:.2f} MB/s; {tokens:,} ids, "
                  f"{tokens * store.dtype.itemsize / 1e6:,.0f} MB on disk; ours adds the validation split, "
                  "end-of-text ids, shards and manifest"),
        Row("data", f"prepare_data {label} text, BPE: peak RSS", "MiB", ours_rss, peer_rss,
            "HF tokenizers streaming loop", target="<= 1000 MiB",
            notes=f"/usr/bin/time; importing prepare_data alone (no TensorFlow): {import_rss:.0f} MiB"),
        Row("data", f"prepare_data {small / 1e6:g} MB text, BPE: peak RSS", "MiB", small_rss, ours_rss,
            f"ours at {label}", target="within 20%", notes="flat in corpus size"),
        Row("data", f"prepare_data {label} text, char: MB/s", "MB/s", megabytes / char_wall, megabytes / ours_wall,
            "ours with BPE", target=">= 1x", notes=f"peak RSS {char_rss:.0f} MiB"),
    ]
    return rows, scratch / "large-bpe", scratch / ("tiny-bpe" if tiny != small else "small-bpe")


def store_rows(quick: bool, large_store: Path, tiny_store: Path) -> list[Row]:
    preset = "nano" if quick else "gpt2"
    config = LMConfig.preset(preset, vocab_size=BPE_VOCAB)
    block, batch, steps = config.block_size, 8, 200 if quick else 2000
    large = read_windows(large_store, block, batch, steps)
    tiny = read_windows(tiny_store, block, batch, steps)
    model = TransformerLM(config)
    step = train_step(model)
    train, _ = lm_datasets(str(large_store), block, 1)
    inputs, targets = next(iter(train))
    # A batch-1 gpt2 step takes ~7 s here: one timed window is one step; the quick nano step is cheap.
    training = best_rate(lambda: step(inputs, targets).numpy(), block, warmup=1, repeats=1 if not quick else 2,
                         min_seconds=1.0)
    return [
        Row("data", f"reading T={block} windows from the {'large' if quick else '1 GB'} store: peak RSS", "MiB",
            large["rss_mib"], tiny["rss_mib"], "the same from a small store", target="< +100 MiB",
            notes=f"{steps} batches of {batch}; {large['rss_mib'] - tiny['rss_mib']:+.0f} MiB"),
        Row("data", f"store pipeline, T={block}, B={batch}", "tokens/s", large["tokens_per_second"], training,
            f"{preset} train step (XLA, AdamW, B=1)", target=">= 20x",
            notes="pipeline tokens/s over the tokens/s training consumes"),
    ]


def shakespeare_rows(quick: bool, scratch: Path) -> list[Row]:
    repeats, seconds = (1, 0.5) if quick else (5, 2.0)
    store = prepare_store(f"text:{SHAKESPEARE}", str(scratch / "shakespeare"))
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
    return [
        Row("data", f"store pipeline, char Tiny Shakespeare, T={BLOCK_SIZE}, B={PIPELINE_BATCH}", "tokens/s",
            pipeline, training, f"char-small train step (XLA, AdamW, B={TRAIN_BATCH})", target=">= 20x",
            notes="pipeline tokens/s over the tokens/s training consumes"),
        Row("data", f"CharTokenizer.encode_array, {len(text) / 1e6:.1f} MB", "chars/s", encode["ours"],
            encode["loop"], "nanoGPT [stoi[c] for c in s]",
            notes="what a store's preparation calls; encode() adds a numpy-to-list conversion"),
    ]


def run(quick: bool):
    with tempfile.TemporaryDirectory(prefix="tf_lm_bench_data_") as scratch:
        scratch = Path(scratch)
        rows, large_store, tiny_store = preparation_rows(quick, scratch)
        return rows + store_rows(quick, large_store, tiny_store) + shakespeare_rows(quick, scratch)
