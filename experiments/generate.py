"""Streams text from a trained model directory as it is generated.

    python -m experiments.generate --model_dir=runs/shakespeare --prompt="ROMEO:" --max_new_tokens=300 \\
        --temperature=0.8 --top_k=40 --seed=1 --num_samples=2

The sampler follows the flags: --temperature=0 is greedy (refused beside --top_k/--top_p, which it would ignore);
--top_p picks nucleus sampling (with --top_k, top-k first); --top_k alone picks top-k; otherwise plain temperature
sampling. Tokens are decoded in chunks of --chunk_size steps, each chunk a compiled program that carries the KV
cache on, so text appears as it is made.
Past the model's context the window slides (--context_policy=slide, the default) or the run is refused (refuse).
With --draft_model_dir (or --drafter=prompt_lookup) decoding is speculative, drafting --num_speculative_tokens per
round (refused without a drafter, which would ignore it); the last line reports the acceptance.
"""

from __future__ import annotations

import sys

from absl import flags

from experiments.flags import define_trained_model_flag, flag_group, one_line_errors, run_script

FLAGS = flags.FLAGS


def define_sampling_flags(default_temperature: float | None) -> None:
    """--temperature, --top_k, --top_p and --context_policy, shared by `experiments.generate` and `.export`.

    `default_temperature` None: unset means greedy, or temperature 1 with --top_k/--top_p (`sampling_kwargs`).
    """
    unset = " Unset: greedy, or 1 with --top_k/--top_p." if default_temperature is None else ""
    with flag_group("sampling"):
        flags.DEFINE_float("temperature", default_temperature, "Softmax temperature; 0 means greedy decoding (not "
                           f"with --top_k/--top_p, which greedy would ignore).{unset}")
        flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens.")
        flags.DEFINE_float("top_p", None, "Nucleus sampling: the smallest set of tokens holding this probability "
                           "mass.")
        flags.DEFINE_enum(
            "context_policy", "slide", ["slide", "refuse"],
            "Past the model's context (prompt + new tokens > block_size): slide the window (keep the newest half "
            "of the context and go on), or refuse with an error.",
        )


def sampling_kwargs(temperature: float | None, top_k: int | None, top_p: float | None) -> dict:
    """The one mapping from sampling flags to `generate`'s sampler arguments.

    A `temperature` of None (export's unset flag) is 0, greedy, unless `top_k` or `top_p` asks to sample: then 1.
    """
    sampler = "top_p" if top_p is not None else "top_k" if top_k is not None else "temperature"
    if temperature is None:
        temperature = 0.0 if sampler == "temperature" else 1.0
    return {"sampler": sampler, "temperature": temperature, "top_k": top_k, "top_p": top_p}


def define_speculative_flags() -> None:
    """--draft_model_dir, --drafter and --num_speculative_tokens, shared by `experiments.generate` and `.export`."""
    with flag_group("speculative decoding"):
        flags.DEFINE_string("draft_model_dir", None, "A smaller model directory with the same tokenizer that "
                            "drafts tokens for the model to verify (same output distribution, fewer model steps).")
        flags.DEFINE_enum("drafter", None, ["model", "prompt_lookup"], "'model' (the default with "
                          "--draft_model_dir) or 'prompt_lookup' (drafts what followed the last n-gram earlier in "
                          "the context; no draft model).")
        flags.DEFINE_integer("num_speculative_tokens", None, "Tokens drafted per speculative round (default 4; "
                             "only with --draft_model_dir or --drafter).")


def stop_token_ids(tokenizer) -> list[int] | None:
    """What ends a sample: the tokenizer's end-of-text id, if it has one. The SavedModel export stops alike."""
    return None if getattr(tokenizer, "eos_id", None) is None else [tokenizer.eos_id]


def speculative_kwargs(tokenizer, draft_model_dir: str | None, drafter: str | None,
                       num_speculative_tokens: int | None) -> dict:
    """The one mapping from the speculative flags to `generate`'s arguments; loads the draft model directory.

    Raises:
        FileNotFoundError: if `draft_model_dir` is not a model directory.
        ValueError: if the draft's tokenizer is not the model's.
    """
    from tf_lm.artifacts import load_model_dir

    draft_model = None
    if draft_model_dir is not None:
        draft_model, draft_tokenizer = load_model_dir(draft_model_dir)
        if draft_tokenizer.fingerprint != tokenizer.fingerprint:
            raise ValueError(f"--draft_model_dir={draft_model_dir} has another tokenizer than the model; train the "
                             "draft with the model's.")
    return {"draft_model": draft_model, "drafter": drafter, "num_speculative_tokens": num_speculative_tokens}


def define_generate_flags() -> None:
    with flag_group("generation"):
        define_trained_model_flag()
        flags.DEFINE_string("prompt", "\n", "Text to continue; every character/token must be in the tokenizer.")
        flags.DEFINE_integer("max_new_tokens", 200, "New tokens per sample (past the context, see "
                             "--context_policy).")
        flags.DEFINE_integer("seed", None, "Seed of the random samplers; sample i uses seed + i. Unset: random.")
        flags.DEFINE_integer("num_samples", 1, "Number of samples, streamed one after another.")
        flags.DEFINE_integer("chunk_size", 8, "Decoding steps per streamed chunk.")
    define_sampling_flags(default_temperature=0.8)
    define_speculative_flags()


class _TextPrinter:
    """Prints the text of a growing id sequence, holding back an incomplete multi-byte character until `finish`."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = 0

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        # Decoding everything so far, not just the chunk: a byte-level BPE chunk can end mid-character, which
        # decodes to U+FFFD until its next bytes come, so a trailing U+FFFD waits for the next chunk or `finish`.
        self._write(self.tokenizer.decode(self.ids).rstrip("\ufffd"))

    def finish(self) -> None:
        """Prints what `add` held back: the text ends where the ids do, a trailing U+FFFD included (a byte sequence
        the sample left unfinished, or a char vocabulary's own U+FFFD token)."""
        self._write(self.tokenizer.decode(self.ids))

    def _write(self, text: str) -> None:
        self.out.write(text[self.printed :])
        self.out.flush()
        self.printed = max(self.printed, len(text))


def run(model_dir: str, prompt: str, max_new_tokens: int, seed: int | None, num_samples: int, chunk_size: int,
        sampling: dict, context_policy: str = "slide", draft_model_dir: str | None = None, drafter: str | None = None,
        num_speculative_tokens: int | None = None, out=sys.stdout) -> None:
    """Loads `model_dir` and streams `num_samples` continuations of `prompt` to `out`.

    With a drafter (`draft_model_dir` or `drafter="prompt_lookup"`) the last line reports how many drafted tokens
    the model accepted per round.

    Raises:
        FileNotFoundError: if `model_dir` is not a model directory.
        ValueError: for a prompt the tokenizer cannot encode or the model cannot continue, or bad settings.
    """
    from tf_lm.artifacts import load_model_dir
    from tf_lm.generation import stream
    from tf_lm.generation.generate import DEFAULT_NUM_SPECULATIVE_TOKENS, SEED_LIMIT
    from tf_lm.generation.speculative import SpeculationStats

    if num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1. Received: --num_samples={num_samples}")
    if seed is not None and seed + num_samples > SEED_LIMIT:  # sample k draws with seed + k
        raise ValueError(f"--seed + --num_samples must be <= 2**62. Received: --seed={seed}, "
                         f"--num_samples={num_samples}")
    model, tokenizer = load_model_dir(model_dir)
    speculation = speculative_kwargs(tokenizer, draft_model_dir, drafter, num_speculative_tokens)
    prompt_ids, stops = tokenizer.encode(prompt), stop_token_ids(tokenizer)
    rounds = accepted = tokens = 0
    drafted = DEFAULT_NUM_SPECULATIVE_TOKENS if num_speculative_tokens is None else num_speculative_tokens
    for sample in range(num_samples):
        # `stream` checks the prompt and settings when called, so a refusal comes before any output.
        chunks = stream(model, [prompt_ids], max_new_tokens=max_new_tokens,
                        seed=None if seed is None else seed + sample, stop_token_ids=stops,
                        context_policy=context_policy, chunk_size=chunk_size, **sampling, **speculation)
        if num_samples > 1:
            out.write(f"--- sample {sample + 1} of {num_samples} ---\n")
        out.write(prompt)
        printer = _TextPrinter(tokenizer, out)
        for chunk in chunks:
            printer.add(chunk[0])
        printer.finish()
        out.write("\n")
        out.flush()
        if chunks.speculation is not None:
            rounds += chunks.speculation.rounds
            accepted += chunks.speculation.accepted
            tokens += chunks.speculation.tokens
    if draft_model_dir is not None or drafter is not None:
        if rounds:
            stats = SpeculationStats(rounds, accepted, tokens, drafted)
            out.write(f"[speculative decoding: {stats}]\n")
        else:
            out.write(f"[speculative decoding off: the prompt, {max_new_tokens} new tokens and "
                      f"{drafted} drafted ones pass the model's context; decoded without drafts]\n")


def main(argv):
    del argv
    with one_line_errors():
        run(FLAGS.model_dir, FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.seed, FLAGS.num_samples, FLAGS.chunk_size,
            sampling_kwargs(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p), FLAGS.context_policy,
            FLAGS.draft_model_dir, FLAGS.drafter, FLAGS.num_speculative_tokens)


if __name__ == "__main__":
    define_generate_flags()
    flags.mark_flags_as_required(["model_dir"])
    run_script(main)
