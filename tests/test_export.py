"""The exported SavedModel: loaded in a fresh process without tf_lm, it reproduces in-process generation."""

import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import keras
import pytest
from conftest import emit_only, run_command

from tf_lm import LMConfig, TransformerLM, generate
from tf_lm.artifacts import save_model_dir
from tf_lm.data import BPETokenizer, CharTokenizer
from tf_lm.generation.export import export_saved_model

TEXT = "hello world, how are you?\n"
PROMPTS = ["hello", "how are", "w"]

# Runs in a fresh interpreter: only TensorFlow, and it checks that nothing imported tf_lm.
LOAD_AND_RUN = """
import json, sys
import tensorflow as tf
results = []
for export_dir, max_new_tokens, seed, prompts in json.loads(sys.argv[1]):
    serving = tf.saved_model.load(export_dir).signatures["generate"]
    out = serving(prompt=tf.constant(prompts), max_new_tokens=tf.constant(max_new_tokens),
                  seed=tf.constant(seed, tf.int64))
    results.append({
        "text": [t.decode("utf-8") for t in out["text"].numpy()],
        "token_ids": out["token_ids"].numpy().tolist(),
        "lengths": out["lengths"].numpy().tolist(),
    })
assert "tf_lm" not in sys.modules, "loading the SavedModel imported tf_lm"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def model_and_tokenizer():
    keras.utils.set_random_seed(2)
    tokenizer = CharTokenizer.from_text(TEXT, end_of_text=True)  # as train_lm's stores build it
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16))
    return model, tokenizer


def load_and_run(*jobs):
    """Runs each `(export_dir, max_new_tokens, seed, prompts)` job in one fresh process; returns their outputs."""
    jobs = [(str(export_dir), *rest) for export_dir, *rest in jobs]
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, json.dumps(jobs)],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 48 s; the CLI export and end-of-text tests cover the export in make test
def test_saved_model_reproduces_in_process_generation_without_tf_lm(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    greedy_dir, sampled_dir, draft_dir = tmp_path / "greedy", tmp_path / "top_p", tmp_path / "draft"
    export_saved_model(model, tokenizer, str(greedy_dir))
    stop = tokenizer.encode("o")[0]
    sampling = dict(sampler="top_p", temperature=1.5, top_p=0.9, stop_token_ids=[stop])
    export_saved_model(model, tokenizer, str(sampled_dir), **sampling)
    draft = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=8))
    export_saved_model(model, tokenizer, str(draft_dir), **sampling, draft_model=draft, num_speculative_tokens=3)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no staging directory left behind

    # 40 new tokens pass the 32-token context: the export slides the window as generate does.
    greedy, sliding, sampled, speculated, past_context = load_and_run(
        (greedy_dir, 7, 0, PROMPTS), (greedy_dir, 40, 0, PROMPTS), (sampled_dir, 9, 77, PROMPTS),
        (draft_dir, 9, 77, PROMPTS), (draft_dir, 40, 77, PROMPTS),
    )

    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    expected = generate(model, prompt_ids, max_new_tokens=7)
    assert greedy["token_ids"] == expected
    assert greedy["text"] == [tokenizer.decode(row) for row in expected]
    assert sliding["token_ids"] == generate(model, prompt_ids, max_new_tokens=40)

    # The baked-in sampler draws the same noise as the XLA-compiled generate, stop token included.
    # Speculative sampling with the draft baked in draws what XLA's does; past the context, it decodes plainly.
    for served, max_new_tokens, draft_model in ((sampled, 9, None), (speculated, 9, draft), (past_context, 40, draft)):
        speculation = {} if draft_model is None else {"draft_model": draft_model, "num_speculative_tokens": 3}
        expected = generate(model, prompt_ids, max_new_tokens=max_new_tokens, seed=77, **sampling, **speculation)
        assert served["lengths"] == [len(row) for row in expected]
        assert [row[:length] for row, length in zip(served["token_ids"], served["lengths"])] == expected
        assert served["text"] == [tokenizer.decode(row) for row in expected]


def test_a_refused_request_fails_with_one_readable_line(model_and_tokenizer, tmp_path):
    import tensorflow as tf

    model, tokenizer = model_and_tokenizer
    export_saved_model(model, tokenizer, str(tmp_path / "refuse"), context_policy="refuse")
    serve = tf.saved_model.load(str(tmp_path / "refuse")).signatures["generate"]
    for prompts, max_new_tokens, seed, message in [
        (["hello"], 28, 0, "longer than the model context (block_size=32), which this SavedModel refuses"),
        # The prompt's length plus this wrapped around in int32 and passed, to fail in TensorFlow's range op.
        (["hello"], 2**31 - 1, 0, "longer than the model context (block_size=32), which this SavedModel refuses"),
        (["hello"], 0, 0, "max_new_tokens must be >= 1"),
        (["hello!"], 2, 0, "a prompt holds a character outside the vocabulary"),
        ([""], 2, 0, "every prompt needs at least one character"),
        ([], 2, 0, "the batch holds no prompts"),
        (["hello"], 2, -1, "seed must be in [0, 2**62)"),
        (["hello"], 2, 2**62, "seed must be in [0, 2**62)"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            serve(prompt=tf.constant(prompts, tf.string), max_new_tokens=tf.constant(max_new_tokens),
                  seed=tf.constant(seed, tf.int64))
        lines = [line for line in str(error.value).splitlines() if "Invalid generate request" in line]
        assert len(lines) == 1 and message in lines[0] and "\\" not in lines[0], str(error.value)
    # A prompt and max_new_tokens that fill the context exactly are not refused.
    out = serve(prompt=tf.constant(["hello world, how are you?hello"]), max_new_tokens=tf.constant(2),
                seed=tf.constant(0, tf.int64))
    assert out["lengths"].numpy().tolist() == [2]
    with pytest.raises(ValueError, match="context_policy must be one of"):
        export_saved_model(model, tokenizer, str(tmp_path / "bad"), context_policy="crop")


def test_export_rejects_a_bpe_tokenizer(model_and_tokenizer, tmp_path):
    model, _ = model_and_tokenizer
    bpe = BPETokenizer.train("the cat sat on the mat " * 20, vocab_size=300)
    with pytest.raises(ValueError, match="Only char-level tokenizers"):
        export_saved_model(model, bpe, str(tmp_path / "bpe"))
    assert not (tmp_path / "bpe").exists()


def test_export_cli_writes_a_saved_model_and_reports_errors_in_one_line(model_and_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    save_model_dir(str(tmp_path / "model"), model, tokenizer)
    result = run_command([sys.executable, "-m", "experiments.export", f"--model_dir={tmp_path / 'model'}",
                          f"--export_dir={tmp_path / 'export'}"])
    assert result.returncode == 0 and (tmp_path / "export" / "saved_model.pb").is_file()
    assert result.stderr == "", "TensorFlow's SavedModel writer logged INFO lines"

    # main() turns the error into one line and a non-zero exit (SystemExit with a message exits with status 1).
    from experiments import export

    parsed = SimpleNamespace(model_dir=str(tmp_path / "missing"), export_dir=str(tmp_path / "export2"),
                             temperature=0.0, top_k=None, top_p=None, context_policy="slide", draft_model_dir=None,
                             drafter=None, num_speculative_tokens=None)
    monkeypatch.setattr(export, "FLAGS", parsed)
    with pytest.raises(SystemExit, match=r"^error: No model.keras in .*missing") as exit_info:
        export.main(["export"])
    assert "\n" not in str(exit_info.value)
    # Aimed at the trained model's own model/ (which carries the same marker), the export is refused untouched.
    saved = tmp_path / "model" / "model"
    before = sorted(os.listdir(saved))
    monkeypatch.setattr(export, "FLAGS", SimpleNamespace(**{**vars(parsed), "model_dir": str(tmp_path / "model"),
                                                         "export_dir": str(saved)}))
    with pytest.raises(SystemExit, match=r"^error: .*holds a trained tf_lm model, which writing a SavedModel export"):
        export.main(["export"])
    assert sorted(os.listdir(saved)) == before and "model.keras" in before


def test_sampling_flags_are_greedy_unless_top_k_or_top_p_ask_to_sample():
    from experiments.generate import sampling_kwargs

    # --temperature is unset in export: greedy, unless --top_k/--top_p ask to sample (then at temperature 1). Its
    # old default, 0, made --top_k=5 alone export a greedy model.
    assert sampling_kwargs(None, None, None) == {"sampler": "temperature", "temperature": 0.0, "top_k": None,
                                                 "top_p": None}
    assert sampling_kwargs(None, 5, None)["temperature"] == sampling_kwargs(None, None, 0.9)["temperature"] == 1.0


@pytest.mark.slow  # 40 s: the export script, then a fresh interpreter that serves three seeds
def test_export_cli_samples_with_top_k_alone(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    save_model_dir(str(tmp_path / "model"), model, tokenizer)
    result = run_command([sys.executable, "-m", "experiments.export", f"--model_dir={tmp_path / 'model'}",
                          f"--export_dir={tmp_path / 'export'}", "--top_k=5"])
    assert result.returncode == 0, result.stderr
    served = load_and_run(*[(tmp_path / "export", 6, seed, ["hello"]) for seed in range(3)])
    prompt_ids = [tokenizer.encode("hello")]
    samples = [out["token_ids"][0][: out["lengths"][0]] for out in served]
    for seed, sample in enumerate(samples):  # the script stops at end-of-text
        assert [sample] == generate(model, prompt_ids, max_new_tokens=6, sampler="top_k", top_k=5, temperature=1.0,
                                    seed=seed, stop_token_ids=[tokenizer.eos_id])
    assert len({tuple(sample) for sample in samples}) > 1


def test_the_exported_model_stops_at_end_of_text_as_the_generate_script_does(model_and_tokenizer, tmp_path):
    from experiments.export import run
    from experiments.generate import run as generate_script
    from experiments.generate import sampling_kwargs

    _, tokenizer = model_and_tokenizer
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    emit_only(model, tokenizer.eos_id)  # every output is end-of-text
    save_model_dir(str(tmp_path / "model"), model, tokenizer)
    printed = io.StringIO()
    generate_script(str(tmp_path / "model"), "hello", max_new_tokens=4, seed=None, num_samples=1, chunk_size=2,
                    sampling=sampling_kwargs(0.0, None, None), out=printed)
    assert printed.getvalue() == "hello<|endoftext|>\n"
    run(str(tmp_path / "model"), str(tmp_path / "export"), sampling_kwargs(0.0, None, None))
    [served] = load_and_run((tmp_path / "export", 4, 0, ["hello"]))
    assert served["token_ids"] == [[tokenizer.eos_id]] and served["lengths"] == [1]
    assert served["text"] == ["<|endoftext|>"]


def test_a_model_with_ids_the_tokenizer_has_no_text_for_is_refused(model_and_tokenizer, tmp_path):
    _, tokenizer = model_and_tokenizer
    wider = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size + 6, block_size=32, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=f"The tokenizer has {tokenizer.vocab_size} ids but the model "
                                         f"{tokenizer.vocab_size + 6}"):
        export_saved_model(wider, tokenizer, str(tmp_path / "wider"))
    assert not (tmp_path / "wider").exists()


def test_export_to_a_tensorflow_filesystem(model_and_tokenizer, tmp_path, monkeypatch):
    import tensorflow as tf

    model, tokenizer = model_and_tokenizer
    monkeypatch.chdir(tmp_path)  # a remote path mistaken for a local one would land here
    export_saved_model(model, tokenizer, "ram://export_test")  # top level: its staging sibling keeps the "//"
    assert tf.io.gfile.exists("ram://export_test/saved_model.pb")
    assert not os.listdir(tmp_path)
    serving = tf.saved_model.load("ram://export_test").signatures["generate"]
    out = serving(prompt=tf.constant(["hello"]), max_new_tokens=tf.constant(5), seed=tf.constant(0, tf.int64))
    assert out["token_ids"].numpy().tolist() == generate(model, [tokenizer.encode("hello")], max_new_tokens=5)
    # A prompt longer than the context: the model sees its last block_size characters, as in generate.
    long_prompt = "how are you? hello world, how are you?"
    whole, last = (serving(prompt=tf.constant([prompt]), max_new_tokens=tf.constant(3), seed=tf.constant(0, tf.int64))
                   for prompt in (long_prompt, long_prompt[-32:]))
    assert whole["token_ids"].numpy().tolist() == last["token_ids"].numpy().tolist()
    # A sliding export (this one) refuses more new tokens than int32 indexes past the prompt, as `generate` does.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Invalid generate request: max_new_tokens must be at "
                                                             r"most 2147483583 for this model \(block_size=32\)"):
        serving(prompt=tf.constant(["hello"]), max_new_tokens=tf.constant(2**31 - 1), seed=tf.constant(0, tf.int64))
