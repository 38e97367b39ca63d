"""Benchmark section "speculative": batch-1 decoding with a draft model, beside HF's XLA `generate` and our own.

A target is trained here on Tiny Shakespeare, char level, and a draft is distilled from it; both are cached under
bench_results/speculative/ (later runs load them; the first run makes them, ~30 minutes on 2 shared cores, so run
that once on its own): the target has char-small's shape (6 layers, 384 wide) with a 320-token context, so a
16-character prompt and 256 new tokens fit with k spare positions; the draft has 2 layers, 128 wide, and learns
from text the target wrote (sequence-level distillation, Kim & Rush 2016, as DistillSpec, Zhou et al. 2024, does
for drafts): a draft trained on the corpus itself predicts the corpus as well as the target does, yet agrees with
the target's own choices on only a third of the tokens, and agreement is what a draft is for. HF's
`TFGPT2LMHeadModel.generate` runs XLA-compiled on the target's weights, converted as `tf_lm.convert` documents,
so both sides decode the same model.

Rows: greedy and top-p at k = 2, 4, 6 (acceptance per round in the notes); prompt lookup on a prompt that
repeats itself; and where the time of a round goes (the draft's k calls, the model's verifying pass) against
a plain decode step and the float32 weight-streaming bound of one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from experiments.benchmarks.common import SHARED_DATA, Row, hf_xla_generate, race

CACHE_DIR = os.path.join("bench_results", "speculative")
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
DATA_FILES = (SHAKESPEARE,)  # the target's training text, read again for the draft's prompts
PROMPT = "ROMEO:\nI will go"  # 16 characters
REPEATING_PROMPT = (
    "KING RICHARD III:\nNow is the winter of our discontent\nKING RICHARD III:\nNow is the winter of our discontent\n"
    "KING RICHARD III:\nNow is the"
)
NEW_TOKENS = 256
COMMON_FLAGS = [
    "--preset=gpt2", "--block_size=320", "--dropout=0", "--batch_size=8", "--warmup_steps=50", "--log_every=50",
    "--eval_steps=40", "--seed=0",
]
PAIR = {
    # name: (flags, steps). The target is char-small's shape (6x384): its 42 MB of float32 weights do not fit this
    # machine's 32 MB L3 cache, so a decode step streams them from memory, the regime speculation is for. 640 steps
    # (1.6M tokens, ~11 minutes on 2 shared cores) are what the time allows; the draft is ~15x cheaper per token.
    "target": (["--n_layer=6", "--n_head=6", "--n_embd=384", "--learning_rate=1.5e-3", "--min_learning_rate=1.5e-4",
                "--tokenizer=char"], 640),
    # No --tokenizer: the draft's corpus is a token store, whose tokenizer (the target's) is fixed.
    "draft": (["--n_layer=2", "--n_head=4", "--n_embd=128", "--learning_rate=2e-3", "--min_learning_rate=2e-4"], 1500),
}
# The draft's corpus: the target's continuations of prompts cut from the training split of Tiny Shakespeare,
# half greedy (the contexts greedy decoding visits, each labelled with the target's argmax) and half sampled at
# temperature 1 (its whole distribution, for the sampling rows).
DISTILL_PROMPTS, DISTILL_PROMPT_CHARS, DISTILL_NEW_TOKENS, DISTILL_BATCH = 768, 32, 256, 128


def _validation_loss(model_dir: str) -> float:
    """The last validation loss `experiments.train_lm` logged in `model_dir`."""
    import csv

    with open(os.path.join(model_dir, "metrics.csv"), newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["split"] == "validation"][-1]


def _distillation_corpus(target, tokenizer, directory: str) -> str:
    """Prepares the draft's corpus (see DISTILL_PROMPTS) as a token store in `directory` once; returns `store:<dir>`.

    The store is encoded with the target's own tokenizer, so the draft's vocabulary is the target's whatever the
    continuations hold. They are one text file, greedy and sampled ones alternating, so the validation split (the
    last 10% of a single document's bytes) holds target text of both kinds that the draft never trains on.
    """
    from tf_lm.data import prepare_store
    from tf_lm.fileio import atomic_write
    from tf_lm.generation import generate

    os.makedirs(directory, exist_ok=True)
    text_path = os.path.join(directory, "target-text.txt")
    if not os.path.isfile(text_path):
        started = time.perf_counter()
        with open(SHAKESPEARE, encoding="utf-8") as f:
            corpus = f.read()
        training_split = corpus[: int(len(corpus) * 0.9)]  # train_lm's default validation_fraction
        starts = np.random.default_rng(0).integers(0, len(training_split) - DISTILL_PROMPT_CHARS, DISTILL_PROMPTS)
        prompts = [tokenizer.encode(training_split[s : s + DISTILL_PROMPT_CHARS]) for s in starts]
        documents = []
        for first in range(0, DISTILL_PROMPTS, DISTILL_BATCH):
            batch = prompts[first : first + DISTILL_BATCH]
            greedy = generate(target, batch, max_new_tokens=DISTILL_NEW_TOKENS)
            sampled = generate(target, batch, max_new_tokens=DISTILL_NEW_TOKENS, sampler="temperature", seed=first)
            for prompt, *continuations in zip(batch, greedy, sampled):
                # The end-of-text id would decode to characters outside the vocabulary.
                documents += [tokenizer.decode([t for t in prompt + new if t != tokenizer.eos_id])
                              for new in continuations]
        atomic_write(text_path, "\n\n".join(documents))
        print(f"wrote the draft's corpus in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    store = os.path.join(directory, "store")
    prepare_store(f"text:{text_path}", store, tokenizer=tokenizer)  # reuses a finished store
    return f"store:{store}"


def trained_pair(cache_dir: str = CACHE_DIR):
    """The (target, draft, tokenizer, validation losses): trained by `experiments.train_lm` (the target on Tiny
    Shakespeare, the draft on the target's text) on the first call, loaded after."""
    from tf_lm.artifacts import MODEL_FILE, load_model_dir, saved_dir

    models, losses = {}, {}
    for name, (flags, steps) in PAIR.items():
        model_dir = os.path.join(cache_dir, name)
        if not os.path.isfile(os.path.join(saved_dir(model_dir), MODEL_FILE)):
            started = time.perf_counter()
            dataset = (f"text:{SHAKESPEARE}" if name == "target" else
                       _distillation_corpus(*models["target"], os.path.join(cache_dir, "draft-corpus")))
            subprocess.run(
                [sys.executable, "-m", "experiments.train_lm", f"--model_dir={model_dir}", f"--dataset={dataset}",
                 f"--steps={steps}", f"--eval_every={steps}", f"--checkpoint_every={steps}", *COMMON_FLAGS, *flags],
                check=True,
            )
            print(f"trained the {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        models[name], losses[name] = load_model_dir(model_dir), _validation_loss(model_dir)
    (target, tokenizer), (draft, _) = models["target"], models["draft"]
    return target, draft, tokenizer, losses


def _hf_copy(model):
    """HF `TFGPT2LMHeadModel` holding `model`'s weights (GPT-2's layout: Conv1D kernels are Dense kernels)."""
    from experiments.benchmarks.common import hf_gpt2
    from tf_lm.convert import gpt2_state

    hf = hf_gpt2(model.config)
    state = {name.removeprefix("transformer."): value for name, value in gpt2_state(model).items()}
    main = hf.transformer
    main.wte.weights[0].assign(state["wte.weight"])
    main.wpe.weights[0].assign(state["wpe.weight"])
    for i, block in enumerate(main.h):
        for name in ("ln_1", "ln_2"):
            getattr(block, name).gamma.assign(state[f"h.{i}.{name}.weight"])
            getattr(block, name).beta.assign(state[f"h.{i}.{name}.bias"])
        for name, layer in (("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                            ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)):
            layer.weight.assign(state[f"h.{i}.{name}.weight"])
            layer.bias.assign(state[f"h.{i}.{name}.bias"].reshape(layer.bias.shape))
    main.ln_f.gamma.assign(state["ln_f.weight"])
    main.ln_f.beta.assign(state["ln_f.bias"])
    return hf


def _round_split(model, draft, k: int, context: int, repeats: int):
    """Milliseconds of a round's parts at batch 1: the draft's k calls, and the model's verifying pass over k + 1
    tokens (each timed as `repeats` dependent calls in one XLA loop, against a cache of `context` slots)."""
    import tensorflow as tf

    def loop(lm, tokens, per_row=True):
        @tf.function(jit_compile=True)
        def run():
            cache = lm.init_cache(1, context)

            def body(i, cache, total):
                slot = i % (context - 8)
                # Speculative rounds write their cache at a slot per row; plain decoding at one shared slot.
                index = tf.fill([1], slot) if per_row else slot
                logits, cache = lm.call_with_cache(tf.fill([1, tokens], i % 7), cache, index,
                                                   position_ids=slot + tf.range(tokens)[None, :])
                return i + 1, cache, total + logits[0, 0, 0]

            return tf.while_loop(lambda i, *_: i < repeats, body, (0, cache, 0.0))[2]

        run()
        start = time.perf_counter()
        run().numpy()
        return (time.perf_counter() - start) / repeats * 1e3

    return {"draft": k * loop(draft, 1), "verify": loop(model, k + 1), "step": loop(model, 1, per_row=False)}


def run(quick: bool) -> list[Row]:
    """Speculative greedy and top-p decoding at k = 2, 4, 6 beside HF's XLA `generate` and our plain decoding.

    `quick` uses random weights of small shapes (no training), k = 2 and 32 new tokens: a smoke test only.
    """
    from experiments.benchmarks.generation import _weight_streaming_bound
    from tf_lm import LMConfig, TransformerLM
    from tf_lm.generation import generate, stream

    if quick:
        model = TransformerLM(LMConfig(vocab_size=65, block_size=128, n_layer=2, n_head=2, n_embd=64))
        draft = TransformerLM(LMConfig(vocab_size=65, block_size=128, n_layer=1, n_head=2, n_embd=32))
        prompt_ids, repeating_ids = list(range(1, 17)), [1, 2, 3, 4] * 8
        new_tokens, ks, settings = 32, (2,), dict(warmup=1, repeats=1, min_seconds=0.2)
        losses = None
    else:
        model, draft, tokenizer, losses = trained_pair()
        prompt_ids, repeating_ids = tokenizer.encode(PROMPT), tokenizer.encode(REPEATING_PROMPT)
        new_tokens, ks, settings = NEW_TOKENS, (2, 4, 6), dict(warmup=1, repeats=2, min_seconds=1.5)
    hf = _hf_copy(model)
    hf_generate = hf_xla_generate(hf)
    check = np.array([prompt_ids], np.int32)
    np.testing.assert_allclose(hf(check).logits.numpy(), np.asarray(model(check)), atol=1e-3)

    shape = f"{draft.config.n_layer}x{draft.config.n_embd}"
    trained = "" if losses is None else (
        f"; target {model.config.n_layer}x{model.config.n_embd} validation loss {losses['target']:.3f}, draft "
        f"{shape} {losses['draft']:.3f} on held-out target text")
    rows = []
    samplings = {
        "greedy": ({}, {"do_sample": False}),
        "top-p 0.95, temperature 0.8": ({"sampler": "top_p", "top_p": 0.95, "temperature": 0.8, "seed": 0},
                                        {"do_sample": True, "top_p": 0.95, "temperature": 0.8, "top_k": 0}),
    }
    for label, (ours, theirs) in samplings.items():
        hf_run = lambda theirs=theirs: hf_generate(check, new_tokens, **theirs)  # noqa: E731
        plain = lambda: generate(model, [prompt_ids], max_new_tokens=new_tokens, **ours)  # noqa: E731
        for k in ks:
            def speculate(k=k):
                return generate(model, [prompt_ids], max_new_tokens=new_tokens, draft_model=draft,
                                num_speculative_tokens=k, **ours)

            rates = race({"spec": speculate, "plain": plain, "hf": hf_run}, new_tokens, **settings)
            chunks = stream(model, [prompt_ids], max_new_tokens=new_tokens, draft_model=draft,
                            num_speculative_tokens=k, chunk_size=new_tokens, **ours)
            list(chunks)
            rows.append(Row(
                section="speculative", name=f"{label}, draft {shape}, k={k}, batch 1, {len(prompt_ids)}+{new_tokens}",
                unit="new tokens/s", ours=rates["spec"], peer=rates["hf"],
                peer_name="HF TFGPT2LMHeadModel.generate (XLA), same weights",
                target=">= 2x HF, >= 1.5x tf_lm without a draft" if label == "greedy" else "",
                notes=f"{rates['spec'] / rates['plain']:.2f}x tf_lm without a draft ({rates['plain']:,.0f}); "
                      f"{chunks.speculation}{trained if not rows else ''}",
            ))

    lookup_tokens = min(new_tokens, model.config.block_size - len(repeating_ids) - 8)
    repeating = np.array([repeating_ids], np.int32)
    rates = race({
        "lookup": lambda: generate(model, [repeating_ids], max_new_tokens=lookup_tokens, drafter="prompt_lookup"),
        "plain": lambda: generate(model, [repeating_ids], max_new_tokens=lookup_tokens),
        "hf": lambda: hf_generate(repeating, lookup_tokens, do_sample=False),
    }, lookup_tokens, **settings)
    chunks = stream(model, [repeating_ids], max_new_tokens=lookup_tokens, drafter="prompt_lookup",
                    chunk_size=lookup_tokens)
    list(chunks)
    rows.append(Row(
        section="speculative", name=f"greedy, prompt lookup (k=4), a prompt repeating itself, "
                                   f"{len(repeating_ids)}+{lookup_tokens}",
        unit="new tokens/s", ours=rates["lookup"], peer=rates["hf"],
        peer_name="HF TFGPT2LMHeadModel.generate (XLA), same weights",
        notes=f"{rates['lookup'] / rates['plain']:.2f}x tf_lm without a drafter ({rates['plain']:,.0f}); "
              f"{chunks.speculation}",
    ))

    bound_ms = 1e3 / _weight_streaming_bound(model, 32 if quick else 256)
    for k in ks:
        split = _round_split(model, draft, k, len(prompt_ids) + new_tokens + k, repeats=32 if quick else 256)
        rows.append(Row(
            section="speculative",
            name=f"one round at k={k}, batch 1: draft's {k} calls + the model's pass over {k + 1}",
            unit="ms", ours=split["draft"] + split["verify"],
            notes=f"draft {split['draft']:.2f} ms, verify {split['verify']:.2f} ms; one plain decode step "
                  f"{split['step']:.2f} ms; float32 weight-streaming bound of a step {bound_ms:.2f} ms",
        ))
    return rows
