"""experiments/train_lm.py as a user runs it: exact resume after SIGKILL, two workers, bad input."""

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from conftest import (
    REPO,
    TEXT,
    failure_line,
    free_port,
    hf_dir,
    run_command,
    script_environment,
    tf_lm_dir,
    train_lm_command,
)

from experiments.flags import configs_from_flags, define_train_flags
from tf_lm.configs import LMConfig
from tf_lm.model import TransformerLM
from tf_lm.training import TrainConfig


def saved_weights(model_dir):
    from tf_lm.artifacts import load_model_dir

    model, _ = load_model_dir(str(model_dir))
    return [np.asarray(w) for w in model.weights]


def test_sigkill_mid_run_then_rerun_ends_with_the_uninterrupted_weights(tmp_path):
    # Dropout on: its randomness must resume exactly too.
    steps = ["--steps=40", "--checkpoint_every=2", "--dropout=0.1", "--log_every=10"]
    straight = subprocess.Popen(train_lm_command(tmp_path / "straight", *steps), cwd=REPO, env=script_environment(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_dir = tmp_path / "killed"
    victim = subprocess.Popen(train_lm_command(killed_dir, *steps), cwd=REPO, env=script_environment(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list(killed_dir.glob("checkpoints/checkpoint")) and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "model").exists(), "the run finished before it was killed"

    resumed = run_command(train_lm_command(killed_dir, *steps))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert straight.wait(timeout=240) == 0
    for a, b in zip(saved_weights(tmp_path / "straight"), saved_weights(killed_dir)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    rows = (killed_dir / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:] if ",train," in r] == list(range(10, 41, 10))
    for name in ("model/config.json", "run_config.json", "loss.png", "model/tokenizer", "logs"):
        assert (killed_dir / name).exists(), name



def test_two_workers_finish_with_identical_weights_and_only_the_chief_writes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            train_lm_command(tmp_path / f"worker{index}", "--strategy=multi_worker", "--steps=4",
                             "--checkpoint_every=2"),
            cwd=REPO, env=script_environment(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        ))
    outputs = [worker.communicate(timeout=240) for worker in workers]
    for worker, (_out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    digests = [[line for line in out.splitlines() if line.startswith("weights sha256")] for out, _ in outputs]
    assert digests[0] and digests[0] == digests[1]
    assert (tmp_path / "worker0" / "model" / "model.keras").exists()
    indexes = sorted(p.name for p in (tmp_path / "worker0" / "checkpoints").glob("*.index"))
    assert indexes == ["ckpt-2.index", "ckpt-4.index"]
    assert not (tmp_path / "worker1").exists()  # the non-chief's checkpoints went to a deleted temp dir


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy=tpu"], "error: No TPU is reachable"),
        (["--precision=float8"], "error: flag --precision=float8: value should be one of"),
        (["--block_size=65"], "error: --block_size=65 exceeds the 64 positions of --preset=nano"),
        (["--batch_size=0"], "error: --batch_size must be an integer >= 1. Received: --batch_size=0"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, args, message):
    result = run_command(train_lm_command(tmp_path / "run", *args))
    assert message in failure_line(result) and result.returncode == 1
    assert not (tmp_path / "run").exists()


def test_a_model_dir_of_another_config_is_refused_and_left_alone(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    before = json.dumps({"model": LMConfig.preset("nano", n_layer=3).to_dict(), "train": TrainConfig().to_dict(),
                         "tokenizer_fingerprint": "x"})
    (model_dir / "run_config.json").write_text(before)
    result = run_command(train_lm_command(model_dir, "--steps=4"))
    assert result.returncode != 0
    assert "holds a run with a different config (" in result.stderr
    assert "n_layer: 3 -> 1" in result.stderr
    assert (model_dir / "run_config.json").read_text() == before
    assert sorted(p.name for p in model_dir.iterdir()) == ["lock", "run_config.json"]


def test_configs_from_flags_takes_the_preset_then_only_the_flags_set():
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", "--preset=char-small", "--n_layer=2", "--steps=700", "--block_size=128"])
    model_config, train_config = configs_from_flags(values)
    assert model_config == LMConfig.preset("char-small", n_layer=2, block_size=128)  # dropout 0.2 kept from the preset
    assert train_config == TrainConfig(steps=700)


def test_bpe_flags_are_refused_with_the_char_tokenizer():
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", "--bpe_vocab_size=300"])
    with pytest.raises(ValueError, match=r"^--bpe_vocab_size only apply with --tokenizer=bpe. Received: "
                                         r"--tokenizer=char$"):
        configs_from_flags(values)


def test_flags_that_prepare_data_are_refused_with_a_prepared_store():
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", "--dataset=store:runs/s", "--validation_fraction=0.2", "--bpe_vocab_size=512"])
    with pytest.raises(ValueError, match=r"--dataset=store:runs/s is prepared already .*; drop "
                                         r"--validation_fraction, --bpe_vocab_size\.$"):
        configs_from_flags(values)


@pytest.mark.parametrize("steps, warmup_flag, warmup", [(10, None, 9), (1, None, 0), (100, None, 99), (101, None, 100),
                                                        (2000, None, 100), (10, "--warmup_steps=3", 3)])
def test_the_default_warmup_is_clamped_to_a_shorter_run_and_says_so(capsys, steps, warmup_flag, warmup):
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", f"--steps={steps}", *([warmup_flag] if warmup_flag else [])])
    _, train_config = configs_from_flags(values)
    assert train_config == TrainConfig(steps=steps, warmup_steps=warmup)
    note = capsys.readouterr().out
    clamped = warmup_flag is None and steps <= TrainConfig().warmup_steps
    assert note == (f"note: the default --warmup_steps=100 does not fit --steps={steps}; warming up for {warmup} "
                    "steps (set --warmup_steps to choose)\n" if clamped else "")
    # flags.txt holds the flags' values: read back as a flagfile, they make the same run.
    rerun = flags.FlagValues()
    define_train_flags(rerun)
    rerun(["train_lm", *(values[name].serialize() for name in ("steps", "warmup_steps"))])
    assert configs_from_flags(rerun)[1] == train_config


def test_a_warmup_the_user_set_is_not_clamped():
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", "--steps=10", "--warmup_steps=10"])
    with pytest.raises(ValueError, match=r"`warmup_steps` must be in \[0, `steps`\)"):
        configs_from_flags(values)


def _parsed(*argv):
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", *argv])
    return values


@pytest.mark.slow
def test_a_flagfile_rerun_of_a_char_run_ends_with_the_same_weights(tmp_path):
    """The rerun the README promises, as a user types it: flags.txt holds the flags given and the warm-up the script
    shortened, not every default (read back, `--tokenizer=char` or `--bpe_sample_mb=20.0` would count as set and the
    rerun be refused)."""
    import re

    from experiments.train_lm import check_flags, script_flags

    source = _text_source(tmp_path)
    given = [f"--dataset={source}", "--steps=3", "--eval_steps=1", "--batch_size=4", "--block_size=16",
             "--n_layer=1", "--n_head=2", "--n_embd=16", "--log_every=50", "--eval_every=1000"]
    first = run_command([sys.executable, "-m", "experiments.train_lm", f"--model_dir={tmp_path / 'a'}", *given])
    assert first.returncode == 0, first.stderr[-2000:]
    rerun = run_command([sys.executable, "-m", "experiments.train_lm", f"--flagfile={tmp_path / 'a' / 'flags.txt'}",
                         f"--model_dir={tmp_path / 'b'}"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    saved = (tmp_path / "a" / "flags.txt").read_text().splitlines()
    assert sorted(saved) == sorted([f"--model_dir={tmp_path / 'a'}", *given, "--warmup_steps=2"])

    def digest(result):
        return re.search(r"weights sha256 (\w+)", result.stdout)[1]

    assert digest(rerun) == digest(first)
    # A resume compares every flag, the defaults flags.txt leaves out included.
    same = _parsed(f"--model_dir={tmp_path / 'a'}", *given)
    configs_from_flags(same)  # shortens the warm-up, as the script does
    check_flags(str(tmp_path / "a"), script_flags(same))
    other = _parsed(f"--model_dir={tmp_path / 'a'}", *given, "--warmup_steps=2", "--learning_rate=0.5")
    with pytest.raises(ValueError, match=r"other flags \(--learning_rate=0.001 -> --learning_rate=0.5\)"):
        check_flags(str(tmp_path / "a"), script_flags(other))


@pytest.mark.parametrize("kind", ["char", "store", "init_from"])
def test_flags_txt_reads_back_as_the_same_configs(tmp_path, kind):
    from experiments.train_lm import FLAGS_FILE, check_flags, given_flags, script_flags
    from tf_lm.data import prepare_store

    if kind == "char":
        argv = [f"--dataset={_text_source(tmp_path)}", "--steps=10"]  # the warm-up shortened to 9 is kept too
    elif kind == "store":
        prepare_store(_text_source(tmp_path), str(tmp_path / "store"))
        argv = [f"--dataset=store:{tmp_path / 'store'}", "--steps=10"]
    else:
        tf_lm_dir(tmp_path / "base")
        argv = [f"--dataset={_text_source(tmp_path)}", f"--init_from={tmp_path / 'base'}", "--steps=10",
                "--warmup_steps=2"]
    values = _parsed(f"--model_dir={tmp_path}", *argv)
    configs = configs_from_flags(values)
    (tmp_path / FLAGS_FILE).write_text("".join(line + "\n" for line in given_flags(values).values()))
    rerun = _parsed(f"--flagfile={tmp_path / FLAGS_FILE}")
    assert configs_from_flags(rerun) == configs  # with --init_from: the checkpoint's config, not --preset's
    check_flags(str(tmp_path), script_flags(rerun))  # and it resumes the run


def test_a_flags_txt_written_with_every_flag_still_resumes_and_refuses_a_change(tmp_path):
    """flags.txt as train_lm wrote it before it kept only the flags given: every flag, the defaults too."""
    from experiments.train_lm import FLAGS_FILE, check_flags, script_flags

    values = _parsed(f"--model_dir={tmp_path}", "--steps=10")
    configs_from_flags(values)
    (tmp_path / FLAGS_FILE).write_text("".join(line + "\n" for line in script_flags(values).values()))
    assert "--tokenizer=char" in (tmp_path / FLAGS_FILE).read_text()
    check_flags(str(tmp_path), script_flags(values))
    changed = _parsed(f"--model_dir={tmp_path}", "--steps=10", "--warmup_steps=9", "--beta2=0.95")
    with pytest.raises(ValueError, match=r"other flags \(--beta2=0.99 -> --beta2=0.95\)"):
        check_flags(str(tmp_path), script_flags(changed))


@pytest.mark.slow  # 22 s: two runs of the script
def test_store_dataset_trains_and_a_store_of_another_tokenizer_is_refused(tmp_path):
    import shutil

    from tf_lm.data import TokenStore, prepare_store

    store = tmp_path / "store"
    prepare_store("builtin:pydoc", str(store), tokenizer="bpe", bpe_vocab_size=300)
    model_dir = tmp_path / "run"
    first = run_command(train_lm_command(model_dir, f"--dataset=store:{store}", "--steps=2"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "tokenizer: bpe, 300 ids" in first.stdout
    assert not (model_dir / "data").exists()  # a store: dataset is read where it is
    assert TokenStore(str(store)).fingerprint == json.loads(
        (model_dir / "run_config.json").read_text())["tokenizer_fingerprint"]
    shutil.rmtree(store)  # the same path, now holding the ids of another tokenizer
    prepare_store("builtin:pydoc", str(store))
    line = failure_line(run_command(train_lm_command(model_dir, f"--dataset=store:{store}", "--steps=2")))
    assert "was prepared with another tokenizer than the model in --model_dir" in line
    assert f"--tokenizer_dir={model_dir / 'model' / 'tokenizer'}" in line


def test_a_split_too_short_for_the_block_is_refused_before_anything_is_written(tmp_path):
    from experiments.train_lm import train

    source = tmp_path / "short.txt"
    source.write_text("To be, or not to be, that is the question.\n" * 12)  # a 53-character validation split
    config = TrainConfig(dataset=f"text:{source}", batch_size=2, steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match="The validation split .* fewer than block_size\\+1=65"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=64), config, str(tmp_path / "run"), verbose=False)
    assert not (tmp_path / "run" / "run_config.json").exists()
    train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(tmp_path / "run"), verbose=False)


@pytest.mark.parametrize("marker", ["tf_lm_export.json", "manifest.json"])
def test_an_export_or_a_token_store_is_refused_as_a_model_dir_and_left_alone(tmp_path, marker):
    # Their own commands replace (an export) or finish (a store) the directory whole, which would delete the run.
    from experiments.train_lm import train

    output = tmp_path / "output"
    output.mkdir()
    (output / marker).write_text("{}")
    config = TrainConfig(dataset="text:unused.txt", batch_size=2, steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match=rf"holds an? (export|token store) \({marker}\), not a training run"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(output), verbose=False)
    assert sorted(path.name for path in output.iterdir()) == [marker]  # not even a lock file


@pytest.mark.parametrize("files, message", [
    # A directory of the user's: the run would overwrite its metrics.csv (an empty --model_dir is the cwd).
    ({"metrics.csv": "my own results"}, r"holds 'metrics.csv' but no training run, so it was left untouched"),
    # A run's model/ that is not a saved model: refused at the start, not after the whole run.
    ({"flags.txt": "", "model/notes.txt": "mine"}, r"model is not empty and holds no tf_lm_export.json"),
])
def test_a_directory_a_run_would_overwrite_is_refused_before_training(tmp_path, files, message):
    from experiments.train_lm import train

    output = tmp_path / "output"
    for name, content in files.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(content)
    config = TrainConfig(dataset="text:unused.txt", batch_size=2, steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match=message):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(output), verbose=False)
    assert {str(path.relative_to(output)) for path in output.rglob("*") if path.is_file()} == set(files)
    with pytest.raises(ValueError, match="--model_dir is empty; name the directory the run writes to"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, "", verbose=False)


@pytest.mark.parametrize("content", ["{}", "[]", '{"model": [], "train": {}}'])
def test_a_damaged_run_config_is_one_line_naming_it(tmp_path, content):
    from experiments.train_lm import RUN_CONFIG, _check_model_dir

    (tmp_path / RUN_CONFIG).write_text(content)
    with pytest.raises(ValueError, match=rf"{RUN_CONFIG} is damaged: it is not the run config training writes"):
        _check_model_dir(str(tmp_path), {"tokenizer_fingerprint": None})


@pytest.mark.parametrize("edit, message", [
    # Each an AttributeError or TypeError in a resume's comparison or in evaluate_lm, printed as a traceback.
    ({"data": []}, "its data is [], not an object of data options or null"),
    ({"store": 1.5}, "its store is 1.5, not an object or null"),
    ({"store": {"source": 5}}, "its store source is 5, not a source (a string) or null"),
    ({"dataset_path": True}, "its dataset_path is True, not a dataset (a string)"),
    ({"train": {"dataset": 5}}, "its train dataset is 5, not a dataset (a string)"),
])
def test_a_run_config_field_its_readers_take_is_named_when_damaged(tmp_path, edit, message):
    """A resume (train_lm) and evaluate_lm read run_config.json through one reader."""
    from experiments.evaluate_lm import define_flags, run_source_options
    from experiments.train_lm import RUN_CONFIG, _check_model_dir

    run_config = {"model": LMConfig.preset("nano").to_dict(), "train": TrainConfig().to_dict(),
                  "dataset_path": "builtin:pydoc", "data": {}, "tokenizer_fingerprint": None,
                  "base_fingerprint": None, "store": None}
    (tmp_path / RUN_CONFIG).write_text(json.dumps({**run_config, **edit}))
    values = flags.FlagValues()
    define_flags(values)
    values(["evaluate_lm", f"--model_dir={tmp_path}", "--dataset=builtin:pydoc"])
    match = "^" + re.escape(f"{tmp_path / RUN_CONFIG} is damaged: {message}; restore it, or correct that value.")
    for read in (lambda: _check_model_dir(str(tmp_path), run_config), lambda: run_source_options(values)):
        with pytest.raises(ValueError, match=match):
            read()


@pytest.mark.parametrize("section, field, value, kinds", [("train", "steps", "20", "a string ('20'), not a number"),
                                                         ("model", "n_head", None, None),
                                                         ("model", "dropout", [0.0], "an array ([0.0]), not a number")])
def test_a_run_config_value_of_another_type_is_damage_not_another_setting(tmp_path, section, field, value, kinds):
    from experiments.train_lm import RUN_CONFIG, _check_model_dir

    run_config = {"model": LMConfig.preset("nano").to_dict(), "train": TrainConfig().to_dict(), "data": {},
                  "tokenizer_fingerprint": None, "base_fingerprint": None}
    damaged = {**run_config, section: {**run_config[section], field: value}}
    (tmp_path / RUN_CONFIG).write_text(json.dumps(damaged))
    if kinds is None:  # null: a setting the run left unset, compared as another setting
        with pytest.raises(ValueError, match=rf"holds a run with a different config \({field}: None -> "):
            _check_model_dir(str(tmp_path), run_config)
        return
    with pytest.raises(ValueError, match=rf"^{tmp_path / RUN_CONFIG} is damaged: its {section} {field} is "
                                         rf"{re.escape(kinds)}; restore it, or use a new --model_dir.$"):
        _check_model_dir(str(tmp_path), run_config)


def test_the_run_config_names_a_relative_dataset_from_any_directory(tmp_path, monkeypatch):
    """evaluate_lm, run from another directory, finds the run's own text (and its split) through it."""
    import tensorflow as tf

    from experiments.train_lm import _run_config

    monkeypatch.chdir(tmp_path)
    recorded = _run_config(LMConfig(), TrainConfig(dataset="text:corpus.txt"), tf.distribute.get_strategy(), None,
                           None, {})
    assert (recorded["train"]["dataset"], recorded["dataset_path"]) == ("text:corpus.txt",
                                                                        f"text:{tmp_path / 'corpus.txt'}")


def test_a_run_whose_source_was_edited_is_not_resumed_on_the_new_text(tmp_path):
    from experiments.train_lm import open_training_store, train

    source = tmp_path / "input.txt"
    source.write_text(TEXT)
    model_config = LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    config = TrainConfig(dataset=f"text:{source}", batch_size=2, steps=1, warmup_steps=0)
    train(model_config, config, str(tmp_path / "run"), verbose=False)
    stores = sorted((tmp_path / "run" / "data").iterdir())
    source.write_text(TEXT.replace("speak", "SPEAK"))
    with pytest.raises(ValueError, match="holds a run trained on another version of 'text:.*input.txt'"):
        train(model_config, config, str(tmp_path / "run"), verbose=False)
    assert sorted((tmp_path / "run" / "data").iterdir()) == stores  # the edited text was not tokenised
    # A new run on the edited text gets a store of its own in a shared cache, not the stale one.
    with contextlib.ExitStack() as stack:
        store = open_training_store(config, str(tmp_path / "other"), {"cache_dir": str(tmp_path / "run" / "data")},
                                    True, stack, verbose=False)
    assert len(list((tmp_path / "run" / "data").iterdir())) == len(stores) + 1
    assert "SPEAK" in store.tokenizer.decode(store.read("train", 0, store.num_tokens("train")))


def test_a_store_re_prepared_with_another_split_or_from_an_edited_source_is_not_resumed(tmp_path):
    from experiments.train_lm import RUN_CONFIG, train
    from tf_lm.data import prepare_store

    source, store = tmp_path / "input.txt", tmp_path / "store"
    source.write_text(TEXT)
    tokens = {split: prepare_store(f"text:{source}", str(store)).num_tokens(split) for split in ("train", "validation")}
    model_config = LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    config = TrainConfig(dataset=f"store:{store}", batch_size=2, steps=1, warmup_steps=0)
    train(model_config, config, str(tmp_path / "run"), verbose=False)
    assert json.loads((tmp_path / "run" / RUN_CONFIG).read_text())["store"] == {
        "source": f"text:{source}", "source_options": {"validation_fraction": 0.1}, "tokens": tokens}
    # The same text and tokenizer, with text the run held out for validation moved into the train split.
    shutil.rmtree(store)
    prepare_store(f"text:{source}", str(store), validation_fraction=0.5)
    with pytest.raises(ValueError, match=r"a different config \(the store's source_options: \{'validation_fraction': "
                                         r"0.1\} -> \{'validation_fraction': 0.5\}; the store's tokens: "):
        train(model_config, config, str(tmp_path / "run"), verbose=False)
    # The same characters (so the same char tokenizer) in another order, prepared at the same path.
    source.write_text("".join(reversed(TEXT.splitlines(keepends=True))))
    shutil.rmtree(store)
    prepare_store(f"text:{source}", str(store))
    with pytest.raises(ValueError, match="holds a run with a different config .*the source's text"):
        train(model_config, config, str(tmp_path / "run"), verbose=False)


def test_a_store_holding_an_id_outside_the_vocabulary_stops_training_with_its_error(tmp_path):
    from experiments.train_lm import train
    from tf_lm.data import prepare_store
    from tf_lm.data.store import DamagedStoreError

    source, store = tmp_path / "input.txt", tmp_path / "store"
    source.write_text(TEXT)
    vocab_size = prepare_store(f"text:{source}", str(store)).vocab_size
    shard = store / "train-00000.bin"
    shard.write_bytes(vocab_size.to_bytes(2, "little") * (shard.stat().st_size // 2))  # every window is damaged
    config = TrainConfig(dataset=f"store:{store}", batch_size=2, steps=1, warmup_steps=0)
    with pytest.raises(DamagedStoreError, match=rf"train-00000.bin holds id {vocab_size} \(at position \d+\)"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(tmp_path / "run"), verbose=False)
    # A validation shard of valid ids that are not the store's: refused before training, not scored.
    shard.write_bytes(bytes(shard.stat().st_size))
    validation = store / "validation-00000.bin"
    written = validation.read_bytes()
    validation.write_bytes(bytes(len(written)))
    with pytest.raises(DamagedStoreError, match="validation-00000.bin does not hold the ids its manifest records"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(tmp_path / "run2"), verbose=False)
    assert not (tmp_path / "run2").exists()
    # A training shard of valid ids that are not the store's: its first window read stops the run, not trained on.
    validation.write_bytes(written)
    with pytest.raises(DamagedStoreError, match="train-00000.bin does not hold the ids its manifest records"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(tmp_path / "run3"), verbose=False)
    assert not list((tmp_path / "run3").glob("**/*.index"))  # no checkpoint


def test_a_source_that_fails_to_prepare_leaves_no_model_dir(tmp_path):
    from experiments.train_lm import train

    source = tmp_path / "latin1.txt"
    source.write_bytes("café\n".encode("latin-1") * 40)
    config = TrainConfig(dataset=f"text:{source}", batch_size=2, steps=1, warmup_steps=0)
    with pytest.raises(ValueError, match="latin1.txt .* is not UTF-8 text"):
        train(LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), config, str(tmp_path / "run"), verbose=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_with_other_data_options_is_refused_and_an_older_run_config_resumes(tmp_path):
    """Python callers pass the data options themselves: those that decide the tokens are the run's identity, as
    --validation_fraction is on the command line, so a resume cannot train on a second split."""
    from experiments.train_lm import RUN_CONFIG, train

    model_config = LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    config = TrainConfig(dataset=_text_source(tmp_path), batch_size=2, steps=1, warmup_steps=0, eval_steps=1)
    train(model_config, config, str(tmp_path / "run"), data_options={"validation_fraction": 0.1}, verbose=False)
    stores = sorted((tmp_path / "run" / "data").iterdir())
    with pytest.raises(ValueError, match=r"a different config \(validation_fraction: 0.1 -> 0.5\)"):
        train(model_config, config, str(tmp_path / "run"), data_options={"validation_fraction": 0.5}, verbose=False)
    assert sorted((tmp_path / "run" / "data").iterdir()) == stores  # refused before a second store was prepared
    # The default is the same run; a run_config.json from before the options and the store were recorded resumes
    # as it did.
    train(model_config, config, str(tmp_path / "run"), verbose=False)
    path = tmp_path / "run" / RUN_CONFIG
    recorded = json.loads(path.read_text())
    assert recorded["data"] == {"validation_fraction": 0.1}
    path.write_text(json.dumps({k: v for k, v in recorded.items() if k not in ("data", "store")}))
    train(model_config, config, str(tmp_path / "run"), data_options={"validation_fraction": 0.1}, verbose=False)


# === Transfer: --init_from, --lora_rank ===
def _text_source(tmp_path, text=TEXT):
    path = tmp_path / "input.txt"
    path.write_text(text)
    return f"text:{path}"


def _finetune(init_from, model_dir, source, **overrides):
    from experiments.train_lm import train
    from tf_lm.pretrained import pretrained_config

    base, kind = pretrained_config(str(init_from))
    settings = dict(dataset=source, tokenizer=kind, init_from=str(init_from), batch_size=4, steps=1, warmup_steps=0,
                    eval_every=1000, eval_steps=1000, log_every=1, learning_rate=1e-2, min_learning_rate=1e-2)
    return train(base, TrainConfig(**{**settings, **overrides}), str(model_dir), verbose=False)


def _first_validation_loss(model_dir):
    import csv

    with open(model_dir / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == "validation"]
    assert rows[0]["step"] == "0"
    return float(rows[0]["loss"])


@pytest.mark.parametrize("kind", ["tf_lm", "hf"])
def test_init_from_starts_at_the_source_models_loss(tmp_path, kind, monkeypatch):
    """A tf_lm model directory, and the directory HF's TF `save_pretrained` writes (with GPT-2's vocab.json +
    merges.txt): the first evaluation is `evaluate_lm`'s loss of the source model on the same validation split.
    And the weights read from the checkpoint are freed before training starts: the model holds them."""
    import gc
    import weakref

    import tf_lm.pretrained
    from experiments.evaluate_lm import evaluate_split
    from tf_lm.convert import load_gpt2_state
    from tf_lm.data import prepare_store
    from tf_lm.pretrained import read_pretrained
    from tf_lm.training.trainer import Trainer

    read_arrays = []

    def read_and_watch(directory):
        pretrained = read_pretrained(directory)
        read_arrays.extend(weakref.ref(array) for array in pretrained.state.values())
        return pretrained

    def fit_once_released(trainer, *args, **kwargs):
        gc.collect()
        assert read_arrays and not [ref for ref in read_arrays if ref() is not None]
        return fit(trainer, *args, **kwargs)

    fit = Trainer.fit
    monkeypatch.setattr(tf_lm.pretrained, "read_pretrained", read_and_watch)  # train_lm imports it when it runs
    monkeypatch.setattr(Trainer, "fit", fit_once_released)

    source = _text_source(tmp_path)
    source_model, _ = (tf_lm_dir if kind == "tf_lm" else hf_dir)(tmp_path / "base")
    base = read_pretrained(str(tmp_path / "base"))
    model = load_gpt2_state(TransformerLM(base.config), base.state)
    store = prepare_store(source, str(tmp_path / "store"), tokenizer=base.tokenizer)
    expected = evaluate_split(model, base.tokenizer, store, "validation")["loss"]
    # The source model's own forward pass gives those logits: a checkpoint misread the same way by the run and by
    # `model` (a swapped LayerNorm, another GELU) would still agree with itself.
    ids = store.read("validation", 0, base.config.block_size)[None]  # (1, block_size)
    source_logits = source_model(ids).logits if kind == "hf" else source_model(ids)
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(source_logits), atol=1e-4)
    _finetune(tmp_path / "base", tmp_path / "run", source)
    assert abs(_first_validation_loss(tmp_path / "run") - expected) < 1e-4


def test_lora_trains_only_the_factors_checkpoints_them_alone_resumes_and_saves_merged(tmp_path):
    import keras
    import tensorflow as tf

    from tf_lm.artifacts import load_model_dir

    source = _text_source(tmp_path)
    base_model, _ = tf_lm_dir(tmp_path / "base")
    lora = dict(lora_rank=2, lora_alpha=4.0, lora_embeddings=True, steps=4, checkpoint_every=2)
    trainer, _, _ = _finetune(tmp_path / "base", tmp_path / "straight", source, **lora)
    d, blocks, vocab = base_model.config.n_embd, base_model.config.n_layer, base_model.config.vocab_size
    factors = blocks * 2 * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))  # rank 2: r·(in + out) per projection
    assert trainer.parameter_report()["trainable"] == factors + 2 * (vocab + d)  # and the token table's
    assert all("/lora_" in v.path for v in trainer.model.trainable_variables)
    saved = tf.train.list_variables(trainer.checkpoints.latest)
    assert len([name for name, _ in saved if name.startswith("model_variables/")]) == 8 * blocks + 2  # A and B of each

    merged = keras.models.load_model(str(tmp_path / "straight" / "model" / "model.keras"), safe_mode=True)
    assert len(merged.weights) == len(base_model.weights)  # no LoRA factor left: they are merged into the kernels
    ids = np.arange(16, dtype="int32")[None] % base_model.config.vocab_size
    np.testing.assert_allclose(np.asarray(merged(ids)), np.asarray(trainer.model(ids)), atol=1e-5)
    assert not np.allclose(np.asarray(merged(ids)), np.asarray(base_model(ids)), atol=1e-3)  # it did train

    # Killed after step 2's checkpoint (it holds only the factors), then resumed: the base comes from --init_from.
    shutil.copytree(tmp_path / "straight", tmp_path / "split")
    shutil.rmtree(tmp_path / "split" / "model")
    for path in (tmp_path / "split" / "checkpoints").glob("ckpt-4*"):
        path.unlink()
    (tmp_path / "split" / "checkpoints" / "checkpoint").unlink()  # the index names ckpt-4: the files say ckpt-2
    _, _, result = _finetune(tmp_path / "base", tmp_path / "split", source, **lora)
    assert result["start_step"] == 2
    resumed, _ = load_model_dir(str(tmp_path / "split"))
    np.testing.assert_allclose(np.asarray(resumed(ids)), np.asarray(merged(ids)), atol=1e-5)
    # A Python caller is held to the run's identity as the command line is: another schedule would mix two runs.
    with pytest.raises(ValueError, match=r"holds a run with a different config \(learning_rate: 0.01 -> 0.02\)"):
        _finetune(tmp_path / "base", tmp_path / "split", source, **{**lora, "learning_rate": 2e-2})


def test_init_from_bad_input_is_refused(tmp_path):
    source = _text_source(tmp_path)
    tf_lm_dir(tmp_path / "base")
    with pytest.raises(ValueError, match="`tokenizer='bpe'` contradicts the char tokenizer"):
        _finetune(tmp_path / "base", tmp_path / "run", source, tokenizer="bpe")
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", f"--init_from={tmp_path / 'base'}", "--n_layer=3", "--block_size=8", "--dropout=0.1"])
    model_config, train_config = configs_from_flags(values)
    assert (model_config.n_layer, model_config.block_size, model_config.dropout) == (3, 8, 0.1)
    assert train_config.tokenizer == "char"
    from experiments.train_lm import train

    with pytest.raises(ValueError, match=r"`n_layer=3` \(the checkpoint has 2\)"):
        train(model_config, train_config, str(tmp_path / "run"), verbose=False)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="'Y' .* is not in this CharTokenizer"):  # the data holds characters it lacks
        _finetune(tmp_path / "base", tmp_path / "run", _text_source(tmp_path / "other", "You are all resolved\n" * 99))
    values(["train_lm", f"--init_from={tmp_path / 'base'}", "--preset=nano"])
    with pytest.raises(ValueError, match=r"^--preset does not apply with --init_from: the architecture is the "
                                         r"checkpoint's.$"):
        configs_from_flags(values)
    result = run_command(train_lm_command(tmp_path / "run", f"--init_from={tmp_path / 'neither'}"))
    assert "does not exist" in failure_line(result)
    result = run_command(train_lm_command(tmp_path / "run", "--lora_rank=4"))
    assert "LoRA adapts a pretrained model; set --init_from. Received: --lora_rank=4" in failure_line(result)


# ram:// lives inside one process: the run, its resume and the load happen in one child.
RAM_RUN = """
import runpy, sys
import tensorflow as tf
from absl import app, flags

app.define_help_flags()

def train():
    before = set(flags.FLAGS)
    sys.argv = ["train_lm", "--model_dir=ram://run", "--data_cache_dir=ram://cache", "--steps=4", "--batch_size=2",
                "--block_size=16", "--n_layer=1", "--n_head=2", "--n_embd=32", "--eval_every=2", "--eval_steps=1",
                "--checkpoint_every=2"]
    try:
        runpy.run_module("experiments.train_lm", run_name="__main__")
    except SystemExit as exit:
        assert not exit.code, exit.code
    for name in set(flags.FLAGS) - before:  # the script's flags, so that it can define them again
        delattr(flags.FLAGS, name)

train()
train()  # the finished run, rerun: resumes from its last checkpoint and re-tokenises nothing
print(sorted(tf.io.gfile.listdir("ram://run")), sorted(tf.io.gfile.listdir("ram://run/model")))
"""


@pytest.mark.slow
def test_a_run_and_its_data_cache_on_a_tensorflow_filesystem():
    result = subprocess.run([sys.executable, "-c", RAM_RUN], cwd=REPO, env=script_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run, model = result.stdout.strip().splitlines()[-1].split("] [")
    expected = ("checkpoints", "flags.txt", "loss.png", "metrics.csv", "model", "run_config.json")
    assert all(f"'{name}" in run for name in expected), run
    assert "'model.keras'" in model and "'tokenizer" in model, model  # the atomic swap moved its files


def test_a_damaged_run_config_fails_in_one_line_naming_it(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "run_config.json").write_text('{"model": {"n_layer": 1}, "tra')  # cut short, as by a full disk
    line = failure_line(run_command(train_lm_command(model_dir)))
    assert line.startswith(f"error: {model_dir / 'run_config.json'} is damaged: it is not valid JSON ("), line


def test_unreadable_or_damaged_run_files_are_errors_naming_them(tmp_path, monkeypatch):
    import tensorflow as tf

    from experiments.train_lm import _check_model_dir, check_flags

    run_config = {"model": LMConfig.preset("nano").to_dict(), "train": TrainConfig().to_dict(),
                  "tokenizer_fingerprint": None, "base_fingerprint": None}
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"n_layer": ')
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'model' / 'config.json'} is damaged: it is not valid JSON"):
        _check_model_dir(str(tmp_path), run_config)

    for name in ("flags.txt", "run_config.json"):
        with tf.io.gfile.GFile(f"ram://unreadable_run/{name}", "w") as f:
            f.write("{}")

    def denied(path, mode="r"):
        raise tf.errors.PermissionDeniedError(None, None, f"{path}; Permission denied")

    monkeypatch.setattr(tf.io.gfile, "GFile", denied)
    with pytest.raises(OSError, match=r"^Could not read ram://unreadable_run/flags.txt: .*Permission denied"):
        check_flags("ram://unreadable_run", {})
    with pytest.raises(OSError, match=r"^Could not read ram://unreadable_run/run_config.json: .*Permission denied"):
        _check_model_dir("ram://unreadable_run", run_config)


@pytest.mark.parametrize("damage, line", [("--learning_ra", "'--learning_ra'"),
                                          ("\x00\x00\x00\x00\n", "'\\x00\\x00\\x00\\x00'")])
def test_a_damaged_flags_txt_is_called_damaged_not_a_run_with_other_flags(tmp_path, damage, line):
    """A cut-short or zero-filled flags.txt (a crash during the write of an older version, a full disk)."""
    from experiments.train_lm import FLAGS_FILE, check_flags, given_flags, script_flags

    values = _parsed(f"--model_dir={tmp_path}", "--steps=10", f"--init_from={tmp_path}")
    configs = "".join(line + "\n" for line in given_flags(values).values())
    (tmp_path / FLAGS_FILE).write_text(configs)
    check_flags(str(tmp_path), script_flags(values))
    (tmp_path / FLAGS_FILE).write_text(configs + damage)
    with pytest.raises(ValueError, match=rf"^{tmp_path / FLAGS_FILE} is damaged: line 4 \({re.escape(line)}\) is not "
                                         r"a flag of train_lm; restore it, or delete it and rerun"):
        check_flags(str(tmp_path), script_flags(values))


def test_a_dataset_glob_that_reads_the_runs_own_files_is_refused(tmp_path):
    """`text:corpus/**` with --model_dir=corpus/run: the run's lock file was its validation text."""
    from experiments.train_lm import _check_source
    from tf_lm.data import open_source

    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "lock").write_text("pid 1 on host h")
    with pytest.raises(ValueError, match=rf"^--dataset=text:{tmp_path}/\*\* reads 1 file\(s\) inside "
                                         rf"--model_dir={tmp_path / 'run'} \(such as {tmp_path / 'run' / 'lock'}\), "
                                         "where the run writes; narrow the glob"):
        _check_source(str(tmp_path / "run"), open_source(f"text:{tmp_path}/**"))
    _check_source(str(tmp_path / "run"), open_source(f"text:{tmp_path}/*"))  # the directory itself is no file
