"""`generate` / `stream` on a tiny model, and the `experiments.generate` CLI around them."""

import io

import keras
import numpy as np
import pytest
from conftest import emit_only, failure_line, run_module

from tf_lm import LMConfig, TransformerLM, generate
from tf_lm.artifacts import save_model_dir
from tf_lm.data import CharTokenizer
from tf_lm.generation import GreedySampler, stream
from tf_lm.generation.generate import _PROGRAMS, _programs, _seed_tensor, slide_keep
from tf_lm.generation.samplers import TopPSampler, fold_in

CONFIG = LMConfig(vocab_size=13, block_size=24, n_layer=2, n_head=2, n_embd=16)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [7]]


@pytest.fixture(scope="module")
def model():
    """Random weights of std 0.5: a padded or lost key moves the logits enough to change greedy tokens."""
    keras.utils.set_random_seed(1)
    model = TransformerLM(CONFIG)
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim == 2 else w
                       for w in model.get_weights()])
    return model


def uncached_greedy(model, prompt, max_new_tokens):
    """The reference: a full forward pass over the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        ids.append(int(np.argmax(model(np.array([ids], np.int32))[0, -1])))
    return ids[len(prompt):]


def test_cached_greedy_equals_uncached_argmax_loop(model):
    new = generate(model, PROMPTS, max_new_tokens=8)
    assert new == [uncached_greedy(model, prompt, 8) for prompt in PROMPTS]


def test_padded_batch_equals_each_row_alone(model):
    batch = generate(model, PROMPTS, max_new_tokens=6)
    assert batch == [generate(model, [prompt], max_new_tokens=6)[0] for prompt in PROMPTS]
    # Random samplers too, for a row at the same index, however far the batch pads it (3 -> 16 slots).
    sampled = generate(model, [[1, 2, 3], list(range(1, 10))], max_new_tokens=6, sampler="top_p", top_p=0.9,
                       temperature=2.0, seed=3)
    alone = generate(model, [[1, 2, 3]], max_new_tokens=6, sampler="top_p", top_p=0.9, temperature=2.0, seed=3)
    assert sampled[0] == alone[0]


def test_padded_array_with_mask_equals_ragged_lists(model):
    array = np.zeros((2, 9), np.int32)
    mask = np.zeros((2, 9), np.int32)
    for row, prompt in enumerate(PROMPTS[:2]):  # right-padded, the usual tokenizer output
        array[row, : len(prompt)], mask[row, : len(prompt)] = prompt, 1
    padded = generate(model, array, max_new_tokens=5, padding_mask=mask)
    assert padded == generate(model, PROMPTS[:2], max_new_tokens=5)
    # and each row's unpadded full-pass reference: `generate` pads ragged lists too, so they cannot be the only one
    assert padded == [uncached_greedy(model, prompt, 5) for prompt in PROMPTS[:2]]


def test_temperature_zero_equals_greedy(model):
    greedy = generate(model, PROMPTS, max_new_tokens=6)
    assert generate(model, PROMPTS, max_new_tokens=6, sampler="temperature", temperature=0.0, seed=9) == greedy


@pytest.mark.parametrize("temperature", [1e-30, 1e-45])
def test_a_tiny_temperature_decodes_the_greedy_tokens(model, temperature):
    # The limit of a vanishing temperature; at 1e-45 (a float32 subnormal, flushed to 0) decoding was NaN logits
    # and token 0 throughout.
    greedy = generate(model, PROMPTS, max_new_tokens=6)
    for settings in ({"sampler": "temperature"}, {"sampler": "top_p", "top_p": 0.9, "top_k": 5}):
        assert generate(model, PROMPTS, max_new_tokens=6, temperature=temperature, seed=9, **settings) == greedy


def test_seed_reproduces_and_other_seeds_differ(model):
    settings = dict(max_new_tokens=12, sampler="temperature", temperature=3.0)
    first = generate(model, PROMPTS, seed=11, **settings)
    assert generate(model, PROMPTS, seed=11, **settings) == first
    assert generate(model, PROMPTS, seed=12, **settings) != first
    # Seeds that differ only above the low 31 bits still differ (the seed is split into two int32 words).
    assert generate(model, PROMPTS, seed=2**31, **settings) != generate(model, PROMPTS, seed=0, **settings)


def test_stop_token_ends_a_row_and_includes_the_stop(model):
    free = generate(model, PROMPTS, max_new_tokens=8, sampler="top_k", top_k=5, seed=4)
    stop = free[0][2]
    stopped = generate(model, PROMPTS, max_new_tokens=8, sampler="top_k", top_k=5, seed=4, stop_token_ids=[stop])
    for free_row, stopped_row in zip(free, stopped):
        end = free_row.index(stop) + 1 if stop in free_row else len(free_row)
        assert stopped_row == free_row[:end]


def test_stream_chunks_concatenate_to_generate(model):
    settings = dict(max_new_tokens=10, sampler="top_p", top_p=0.8, temperature=1.5, seed=5)
    expected = generate(model, PROMPTS, **settings, stop_token_ids=[3])
    chunks = list(stream(model, PROMPTS, **settings, stop_token_ids=[3], chunk_size=3))
    assert 2 <= len(chunks) <= 4 and all(len(row) <= 3 for chunk in chunks for row in chunk)
    assert [sum((chunk[row] for chunk in chunks), []) for row in range(len(PROMPTS))] == expected


def test_equal_sampler_settings_share_one_compiled_program(model):
    # The CLI's default sampler: RandomSampler inherits its get_config, and was keyed by identity, so every call
    # compiled (and kept) a program of its own.
    programs = _PROGRAMS.setdefault(model, {})
    before = len(programs)
    for seed in range(3):
        generate(model, [[1, 2]], max_new_tokens=2, sampler="temperature", temperature=1.3, seed=seed)
    assert len(programs) == before + 1


def enable_visible_lora(*models):
    """Enables rank-2 LoRA on `models` with factors far from their zero start, so the update changes outputs."""
    from tf_lm.training.lora import enable_lora

    rng = np.random.default_rng(2)
    for model in models:
        enable_lora(model, rank=2)
        for variable in model.trainable_weights:
            variable.assign(rng.normal(0, 2.0, variable.shape).astype("float32"))


def test_a_model_changed_by_lora_is_traced_again():
    """A program traced before `enable_lora` kept running the model without its factors."""
    keras.utils.set_random_seed(2)
    model = TransformerLM(CONFIG)
    before = generate(model, PROMPTS[:1], max_new_tokens=6)
    enable_visible_lora(model)
    after = generate(model, PROMPTS[:1], max_new_tokens=6)
    assert after != before and after == [uncached_greedy(model, PROMPTS[0], 6)]


@pytest.mark.slow  # 20 s: speculative decoding's programs, compiled twice
def test_a_speculative_program_is_traced_again_after_lora_changes_its_models():
    keras.utils.set_random_seed(2)
    model, draft = TransformerLM(CONFIG), TransformerLM(CONFIG)
    before = generate(model, PROMPTS[:1], max_new_tokens=6, draft_model=draft)
    enable_visible_lora(model, draft)
    after = generate(model, PROMPTS[:1], max_new_tokens=6, draft_model=draft)
    assert after == [uncached_greedy(model, PROMPTS[0], 6)] != before


def test_prompts_in_one_bucket_reuse_one_compiled_program(model):
    run = _programs(model, GreedySampler()).run
    generate(model, [[1, 2, 3]], max_new_tokens=4)
    traces = run.experimental_get_tracing_count()
    generate(model, [[1, 2, 3, 4, 5]], max_new_tokens=4)
    generate(model, [[9, 8, 7, 6, 5, 4, 3]], max_new_tokens=4)
    assert run.experimental_get_tracing_count() == traces


def test_context_edges(model):
    # One prompt token and the whole rest of the context: the prompt bucket shrinks to one slot.
    assert generate(model, [[5]], max_new_tokens=CONFIG.block_size - 1) == [
        uncached_greedy(model, [5], CONFIG.block_size - 1)
    ]
    # A prompt that fills the context but one slot.
    prompt = list(np.arange(CONFIG.block_size - 1) % CONFIG.vocab_size)
    assert generate(model, [prompt], max_new_tokens=1) == [uncached_greedy(model, prompt, 1)]


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ([[1, 2], []], {}, "Prompt 1 is empty"),
        ([[1] * 20], {"max_new_tokens": 5, "context_policy": "refuse"}, "beyond the model's context block_size=24"),
        ([[1] * 25], {"max_new_tokens": 1, "context_policy": "refuse"}, "or pass `context_policy='slide'`"),
        ([[1]], {"context_policy": "crop"}, r"`context_policy` must be one of \['slide', 'refuse'\]"),
        ([[1, 13]], {}, r"token id 13, outside the model's vocabulary \[0, 13\)"),
        ([[1, -1]], {}, "token id -1"),
        ([[1, 2]], {"max_new_tokens": 0}, "`max_new_tokens` must be an integer >= 1"),
        ([[1, 2]], {"max_new_tokens": 2.5}, "`max_new_tokens` must be an integer >= 1"),
        # Past int32: the compiled loop failed on negative paddings, in a 47-line traceback.
        ([[1, 2]], {"max_new_tokens": 3_000_000_000}, "`max_new_tokens` must be at most 2147483599 for a model with "
                                                      "block_size=24"),
        ([1, 2, 3], {}, "wrap a single prompt in a list"),
        ([], {}, "holds no prompts"),
        ([[1.5, 2.0]], {}, "integer token ids"),
        ([[1, 2]], {"padding_mask": [[1, 1]]}, "ragged lists need none"),
        (np.ones((2, 3), np.int32), {"padding_mask": np.ones((2, 4))}, "shape of prompt_ids"),
        ([[1, 2]], {"seed": -1}, "`seed` must be an integer"),
        ([[1, 2]], {"stop_token_ids": [99]}, "stop_token_ids"),
        ([[1, 2]], {"sampler": "top_k"}, "needs top_k"),
        # Plain decoding would ignore it, as greedy would top_k (refused by get_sampler); the default value too.
        ([[1, 2]], {"num_speculative_tokens": 3}, "`num_speculative_tokens` only applies to speculative decoding"),
        ([[1, 2]], {"num_speculative_tokens": 4}, "`num_speculative_tokens` only applies to speculative decoding"),
    ],
)
def test_generate_rejects_bad_input(model, prompts, kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, **kwargs)


def test_the_generate_script_names_its_flags_in_the_argument_errors(model):
    """tf_lm names the arguments in backticks; `experiments.generate` prints those that are its flags as flags."""
    from absl import flags

    from experiments.flags import in_flag_terms

    script_flags = flags.FlagValues()
    for name in ("max_new_tokens", "seed", "chunk_size", "num_speculative_tokens"):
        flags.DEFINE_integer(name, None, "", flag_values=script_flags, module_name="experiments.generate")
    for name in ("context_policy", "drafter", "draft_model_dir"):
        flags.DEFINE_string(name, None, "", flag_values=script_flags, module_name="experiments.generate")
    for call, message in [
        (lambda: generate(model, [[1, 2]], max_new_tokens=0),
         "--max_new_tokens must be an integer >= 1. Received: --max_new_tokens=0"),
        (lambda: generate(model, [[1, 2]], max_new_tokens=2, seed=-1),
         "--seed must be an integer in [0, 2**62) or None. Received: --seed=-1"),
        (lambda: stream(model, [[1, 2]], max_new_tokens=2, chunk_size=0),
         "--chunk_size must be an integer >= 1. Received: --chunk_size=0"),
        (lambda: generate(model, [[1, 2]], max_new_tokens=2, drafter="prompt_lookup", num_speculative_tokens=0),
         "--num_speculative_tokens must be an integer >= 1. Received: --num_speculative_tokens=0"),
        (lambda: generate(model, [[1] * 20], max_new_tokens=5, context_policy="refuse"),
         "Prompt 0 has 20 tokens and --max_new_tokens=5, 25 in all, beyond the model's context block_size=24; "
         "shorten the prompt (keep its last tokens), ask for fewer new tokens, or pass --context_policy='slide'."),
        # The draft model is a directory on the command line.
        (lambda: generate(model, [[1, 2]], max_new_tokens=2, drafter="model"),
         "--drafter='model' needs a --draft_model_dir, a smaller model with the same vocabulary."),
        (lambda: generate(model, [[1, 2]], max_new_tokens=2, drafter="prompt_lookup", draft_model=model),
         "--drafter='prompt_lookup' drafts from the context and takes no --draft_model_dir; pass one or the other."),
        (lambda: stream(model, [[1, 2]], max_new_tokens=2, num_speculative_tokens=3),
         "--num_speculative_tokens only applies to speculative decoding, with a --draft_model_dir or a --drafter; "
         "pass one, or drop it. Received: --num_speculative_tokens=3"),
        # One past the limit, 2**31 - 1 - 2 * block_size: the prompt bucket and the window past the buffer fit int32.
        (lambda: generate(model, [[1, 2]], max_new_tokens=2**31 - 48),
         "--max_new_tokens must be at most 2147483599 for a model with block_size=24: decoding indexes the prompt, "
         "the new tokens and a window past them with int32. Received: --max_new_tokens=2147483600"),
    ]:
        with pytest.raises(ValueError) as error:
            call()
        assert in_flag_terms(str(error.value), script_flags) == message


# === Past the context: the sliding window ===


def sharp_model(block_size):
    """A random model with large weights, so greedy continuations vary instead of repeating one token."""
    model = TransformerLM(LMConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, n_embd=16))
    rng = np.random.default_rng(block_size)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") if w.ndim == 2 else w
                       for w in model.get_weights()])
    return model


def naive_crop_loop(model, prompt, max_new_tokens, sampler=None, seed=None, row=0):
    """The reference: recompute the whole context for every token, cropping it as the policy documents.

    The context starts as the prompt's last block_size tokens; when it would pass block_size tokens it keeps its
    newest slide_keep(block_size). Greedy by default; with `sampler`, the draws of batch row `row`.
    """
    window = model.config.block_size
    ids = list(prompt[-window:])
    start, first = 0, len(ids)
    for step in range(max_new_tokens):
        if len(ids) - start > window:
            start = len(ids) - slide_keep(window)
        logits = model(np.array([ids[start:]], np.int32))[:, -1]  # (1, V)
        if sampler is None:
            ids.append(int(np.argmax(logits[0])))
        else:
            rows = np.repeat(logits, row + 1, axis=0)  # (row + 1, V): the noise depends on the row index
            ids.append(int(sampler.get_next_token(rows, fold_in(_seed_tensor(seed), step))[row]))
    return ids[first:]


@pytest.mark.parametrize("block_size", [1, 9])
def test_sliding_greedy_equals_the_naive_crop_and_recompute_loop(block_size):
    model = sharp_model(block_size)
    # Ragged rows slide at different steps, each as the naive loop over that row alone; the second prompt is
    # longer than the context. At block_size 1 the window slides at every token.
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2], [7]]
    new = generate(model, prompts, max_new_tokens=2 * block_size + 3)
    assert new == [naive_crop_loop(model, prompt, 2 * block_size + 3) for prompt in prompts]


def test_sliding_streams_sampled_chunks_as_the_naive_loop():
    model = sharp_model(8)
    sampler = TopPSampler(0.9, temperature=1.5)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    chunks = list(stream(model, prompts, max_new_tokens=21, sampler=sampler, seed=7, chunk_size=5))
    assert [sum((chunk[row] for chunk in chunks), []) for row in range(2)] == [
        naive_crop_loop(model, prompt, 21, sampler, seed=7, row=row) for row, prompt in enumerate(prompts)
    ]


# === The CLI ===


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    tokenizer = CharTokenizer.from_text("abcdefghijkl\n")
    assert tokenizer.vocab_size <= CONFIG.vocab_size
    directory = tmp_path_factory.mktemp("model")
    save_model_dir(str(directory), model, tokenizer)
    return str(directory)


class RecordingOut(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def test_cli_streams_text_chunk_by_chunk(model_dir):
    from experiments.generate import run, sampling_kwargs

    out = RecordingOut()
    run(model_dir, "abc", max_new_tokens=6, seed=1, num_samples=2, chunk_size=2,
        sampling=sampling_kwargs(temperature=1.0, top_k=4, top_p=None), out=out)
    samples = out.getvalue().split("--- sample ")[1:]
    assert len(samples) == 2
    for sample in samples:
        text = sample.split("---\n", 1)[1]
        assert text.startswith("abc") and len(text) == len("abc") + 6 + 1  # prompt, 6 characters, newline
    # Three chunks of two characters per sample, each written as it came.
    assert sum(1 for w in out.writes if len(w) == 2 and "-" not in w) >= 6
    # sample i uses seed + i: the second sample equals a one-sample run with seed 2.
    again = io.StringIO()
    run(model_dir, "abc", max_new_tokens=6, seed=2, num_samples=1, chunk_size=3,
        sampling=sampling_kwargs(temperature=1.0, top_k=4, top_p=None), out=again)
    assert samples[1].split("---\n", 1)[1] == again.getvalue()


@pytest.mark.slow
def test_cli_speculates_with_a_draft_model_dir_and_reports_the_acceptance(model_dir, model, tmp_path):
    from experiments.generate import run, sampling_kwargs

    settings = dict(seed=None, num_samples=1, chunk_size=4, sampling=sampling_kwargs(0.0, None, None))
    plain = io.StringIO()
    run(model_dir, "abc", max_new_tokens=8, **settings, out=plain)
    # The model as its own draft: the same text, every draft accepted.
    out = io.StringIO()
    run(model_dir, "abc", max_new_tokens=8, **settings, draft_model_dir=model_dir, num_speculative_tokens=3, out=out)
    text, last = out.getvalue().rstrip("\n").rsplit("\n", 1)
    assert text + "\n" == plain.getvalue()
    assert last == "[speculative decoding: 4.00 tokens per model pass (3.00 of 3 drafted accepted, 100%)]"
    out = io.StringIO()
    run(model_dir, "abc", max_new_tokens=22, **settings, drafter="prompt_lookup", out=out)
    assert out.getvalue().splitlines()[-1].startswith("[speculative decoding off: the prompt, 22 new tokens and 4")

    other = tmp_path / "other"
    save_model_dir(str(other), model, CharTokenizer.from_text("abcdefghijkm\n"))
    with pytest.raises(ValueError, match="has another tokenizer than the model"):
        run(model_dir, "abc", max_new_tokens=8, **settings, draft_model_dir=str(other))


def test_sampling_flags_pick_the_sampler():
    from experiments.generate import sampling_kwargs

    assert sampling_kwargs(0.8, None, None)["sampler"] == "temperature"
    assert sampling_kwargs(0.8, 40, None)["sampler"] == "top_k"
    assert sampling_kwargs(0.8, 40, 0.9)["sampler"] == "top_p"


def test_cli_rejects_prompts_it_cannot_continue(model_dir):
    from experiments.generate import run, sampling_kwargs

    settings = dict(max_new_tokens=3, seed=None, num_samples=1, chunk_size=2,
                    sampling=sampling_kwargs(0.0, None, None), context_policy="refuse")
    for prompt, message in [("abZ", "Character 'Z'"), ("", "Prompt 0 is empty"), ("a" * 30, "block_size=24")]:
        out = io.StringIO()
        with pytest.raises(ValueError, match=message):
            run(model_dir, prompt, out=out, **settings)
        assert out.getvalue() == ""  # refused before printing anything
    out = io.StringIO()  # it printed the prompt, then the traceback of the compiled loop's int32 overflow
    with pytest.raises(ValueError, match="`max_new_tokens` must be at most 2147483599"):
        run(model_dir, "abc", out=out, **{**settings, "max_new_tokens": 3_000_000_000, "context_policy": "slide"})
    assert out.getvalue() == ""
    # The default policy slides past the context instead.
    out = io.StringIO()
    run(model_dir, "a" * 30, **{**settings, "context_policy": "slide"}, out=out)
    assert out.getvalue().startswith("a" * 30) and len(out.getvalue()) == 30 + 3 + 1
    with pytest.raises(ValueError, match="^--num_samples must be >= 1. Received: --num_samples=0$"):
        run(model_dir, "a", **{**settings, "num_samples": 0})
    out = io.StringIO()
    with pytest.raises(ValueError, match=r"--seed \+ --num_samples must be <= 2\*\*62"):  # sample 2's seed
        run(model_dir, "a", out=out, **{**settings, "seed": 2**62 - 1, "num_samples": 2})
    assert out.getvalue() == ""
    for drafted in (3, 4):  # the flag's default value too, given: it decoded without drafts, ignoring the setting
        out = io.StringIO()
        with pytest.raises(ValueError, match="`num_speculative_tokens` only applies to speculative decoding"):
            run(model_dir, "a", out=out, **settings, num_speculative_tokens=drafted)
        assert out.getvalue() == ""


def test_a_sampler_subclass_that_inherits_get_config_gets_a_program_per_instance(model):
    import tensorflow as tf

    from tf_lm.generation.samplers import Sampler

    class Always(Sampler):
        def __init__(self, token):
            super().__init__()
            self.token = token

        def get_next_token(self, logits, seed):
            return tf.fill(tf.shape(logits)[:1], self.token)

    assert generate(model, [[1]], max_new_tokens=3, sampler=Always(4)) == [[4, 4, 4]]
    assert generate(model, [[1]], max_new_tokens=3, sampler=Always(7)) == [[7, 7, 7]]


def test_cli_prints_a_sample_that_ends_with_a_char_vocabularys_replacement_character(tmp_path):
    from experiments.generate import run, sampling_kwargs

    # A char vocabulary whose unknown token is U+FFFD, and a model that emits only it. The printer held trailing
    # U+FFFD back as a half-decoded multi-byte character, and never printed it.
    tokenizer = CharTokenizer.from_text("abc", unknown_token="\ufffd")
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8))
    emit_only(model, tokenizer.encode("\ufffd")[0])
    save_model_dir(str(tmp_path / "model"), model, tokenizer)
    out = io.StringIO()
    run(str(tmp_path / "model"), "ab", max_new_tokens=3, seed=None, num_samples=1, chunk_size=2,
        sampling=sampling_kwargs(0.0, None, None), out=out)
    assert out.getvalue() == "ab\ufffd\ufffd\ufffd\n"


def test_the_printer_holds_back_a_partial_multi_byte_character_until_it_is_complete():
    from experiments.generate import _TextPrinter

    class Bytes:  # a byte-level tokenizer: one id per byte
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    out = RecordingOut()
    printer = _TextPrinter(Bytes(), out)
    a, e_acute = list(b"a"), list("é".encode())
    printer.add(a + e_acute[:1])  # "a" and half of "é"
    printer.add(e_acute[1:] + e_acute[:1])  # the rest of "é", and half of another that never completes
    printer.finish()
    assert out.writes == ["a", "é", "\ufffd"]


def test_cli_errors_are_one_line_and_exit_non_zero():
    result = run_module("experiments.generate", "--model_dir=/nonexistent/model", "--prompt=hi",
                        env={"TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert failure_line(result).startswith("error: No model.keras in '/nonexistent/model'")
