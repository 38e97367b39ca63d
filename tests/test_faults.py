"""Fault injection: what a user keeps and sees when a run is killed, interrupted, damaged, out of disk, doubled up,
resumed with other flags, or pointed at someone else's directory. Each asserts: nothing of the user's lost, one
line, the exit code.

The scenarios run `experiments.train_lm` as a user does, so they are `slow`; the in-process checks of the same
rules (fileio, checkpoints, flags) run in the default suite.
"""

import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from absl import flags
from conftest import REPO, failure_line, free_port, run_command, script_environment, train_lm_command

from experiments import train_lm
from experiments.flags import define_train_flags
from tf_lm import LMConfig, TransformerLM
from tf_lm.artifacts import save_model_dir
from tf_lm.data import CharTokenizer
from tf_lm.fileio import directory_lock


def digest(result):
    return re.search(r"weights sha256 (\w+)", result.stdout).group(1)


def start(args, **env):
    return subprocess.Popen(args, cwd=REPO, env=script_environment(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def latest_step(model_dir):
    try:
        text = (model_dir / "checkpoints" / "checkpoint").read_text()
    except FileNotFoundError:
        return 0
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else 0


def leftovers(model_dir):
    """Temporary files or directories (ours are hidden, TensorFlow's checkpoint ones end in _temp) anywhere."""
    return [os.path.join(root, name) for root, dirs, files in os.walk(model_dir) for name in dirs + files
            if name.startswith(".") or "_temp" in name]


# === In-process: the default suite ===

def parsed_flags(*argv):
    values = flags.FlagValues()
    define_train_flags(values)
    values(["train_lm", *argv])
    return values


def test_a_resume_with_other_result_flags_is_refused_listing_each_difference(tmp_path):
    first = train_lm.script_flags(parsed_flags(f"--model_dir={tmp_path}", "--steps=4", "--n_layer=2"))
    (tmp_path / train_lm.FLAGS_FILE).write_text("".join(line + "\n" for line in first.values()))
    train_lm.check_flags(str(tmp_path), first)  # the same flags resume

    # Where and how often things are written may change; the trained weights do not depend on them.
    train_lm.check_flags(str(tmp_path), train_lm.script_flags(parsed_flags(
        f"--model_dir={tmp_path}", "--steps=4", "--n_layer=2", "--log_every=1", "--eval_every=3",
        "--checkpoint_every=1", "--eval_steps=2", "--data_cache_dir=/tmp/ids")))

    changed = train_lm.script_flags(parsed_flags(f"--model_dir={tmp_path}", "--steps=5", "--learning_rate=0.5"))
    with pytest.raises(ValueError) as error:
        train_lm.check_flags(str(tmp_path), changed)
    message = str(error.value)
    assert "\n" not in message
    assert "--learning_rate=0.001 -> --learning_rate=0.5" in message
    assert "--n_layer=2 -> --n_layer unset" in message
    assert "--steps=4 -> --steps=5" in message
    assert f"--flagfile={tmp_path / train_lm.FLAGS_FILE}" in message
    assert message.endswith(f"or use a new --model_dir (with --init_from={tmp_path} to go on from this run's "
                            "weights once it has finished).")


def test_every_flag_but_the_listed_few_is_part_of_the_run_identity():
    names = set(train_lm.script_flags(parsed_flags("--model_dir=x", "--n_layer=1", "--n_head=1", "--n_embd=8",
                                                   "--dropout=0", "--block_size=8", "--bpe_vocab_size=300",
                                                   "--tpu=t", "--tfds_data_dir=d", "--tfds_manual_dir=m",
                                                   "--data_cache_dir=c")))
    assert train_lm.NOT_IDENTITY <= names
    identity = names - train_lm.NOT_IDENTITY
    assert {"steps", "learning_rate", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip",
            "validation_fraction", "tfds_data_dir", "tfds_manual_dir", "seed", "dataset"} <= identity


def test_a_second_holder_of_a_directory_is_refused_naming_the_first(tmp_path):
    with directory_lock(str(tmp_path / "run")):
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {os.getpid()} on host "
                                             rf"{re.escape(socket.gethostname())}, since "):
            with directory_lock(str(tmp_path / "run")):
                pass
    with directory_lock(str(tmp_path / "run")):  # released: the next run gets it
        pass
    assert not (tmp_path / "run").exists()  # created for nothing, so removed again
    (tmp_path / "run").mkdir()
    with directory_lock(str(tmp_path / "run")):
        pass
    assert (tmp_path / "run" / "lock").read_text() == ""  # no holder line left that reads as a live run


def test_a_lock_removes_the_empty_parents_it_created_and_keeps_the_others(tmp_path):
    with pytest.raises(ValueError, match="refused"):
        with directory_lock(str(tmp_path / "new" / "deeper" / "run")):
            raise ValueError("refused")  # as train_lm refuses a run inside the lock
    assert os.listdir(tmp_path) == []
    with directory_lock(str(tmp_path / "kept" / "run")):
        (tmp_path / "kept" / "note.txt").write_text("a file of the user's, written meanwhile")
    assert os.listdir(tmp_path / "kept") == ["note.txt"]


def test_export_over_a_foreign_directory_is_refused_in_one_line_and_touches_nothing(tmp_path, monkeypatch):
    from experiments import export

    tokenizer = CharTokenizer.from_text("hello world")
    model = TransformerLM(LMConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_model_dir(str(tmp_path / "model"), model, tokenizer)
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for export_dir in (foreign, foreign / "precious.txt"):
        parsed = SimpleNamespace(model_dir=str(tmp_path / "model"), export_dir=str(export_dir), temperature=0.0,
                                 top_k=None, top_p=None, context_policy="slide", draft_model_dir=None, drafter=None,
                                 num_speculative_tokens=None)
        monkeypatch.setattr(export, "FLAGS", parsed)
        with pytest.raises(SystemExit, match=r"^error: .*precious.*choose a new or empty directory") as stopped:
            export.main(["export"])
        assert "\n" not in str(stopped.value)
    assert sorted(os.listdir(tmp_path)) == ["model", "precious"]
    assert os.listdir(foreign) == ["precious.txt"] and (foreign / "precious.txt").read_text() == "keep me"


def test_make_clean_keeps_the_users_runs(tmp_path):
    # The Makefile in a directory of its own, beside what clean removes and a user's run.
    shutil.copy(REPO / "Makefile", tmp_path)
    for built in (".venv/bin/python", "tf_lm.egg-info/PKG-INFO", "bench_results/results.json", "runs/x/model.keras"):
        (tmp_path / built).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / built).write_text("x")
    subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert sorted(os.listdir(tmp_path)) == ["Makefile", "runs"]
    assert (tmp_path / "runs" / "x" / "model.keras").read_text() == "x"


# === Scenarios: the script as a user runs it (slow) ===

@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_gives_bit_identical_weights(tmp_path):
    steps = ["--steps=80", "--checkpoint_every=1", "--dropout=0.1"]
    straight = run_command(train_lm_command(tmp_path / "straight", *steps))
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = tmp_path / "killed"
    for target in sorted(random.Random(0).sample(range(2, 60), 3)):
        victim = start(train_lm_command(killed, *steps))
        wait_for(lambda target=target: latest_step(killed) >= target)
        victim.kill()
        victim.communicate()
        assert victim.returncode == -signal.SIGKILL
        assert not (killed / "model").exists(), "the run finished before it was killed"
    resumed = run_command(train_lm_command(killed, *steps))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    assert digest(resumed) == digest(straight)
    assert not leftovers(killed)


@pytest.mark.slow
def test_ctrl_c_then_a_full_disk_then_a_resume(tmp_path):
    model_dir = tmp_path / "run"
    steps = ["--steps=3000", "--checkpoint_every=1000"]
    victim = start(train_lm_command(model_dir, *steps))
    wait_for(lambda: (model_dir / "metrics.csv").exists())  # training (and its signal handler) has started
    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=240)
    assert victim.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped: Stopped by SIGINT at step "), line
    step = latest_step(model_dir)
    assert f"at step {step};" in line

    # A full disk while resuming: RLIMIT_FSIZE refuses the checkpoint's 72 kB data file as ENOSPC would.
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    full = subprocess.run(train_lm_command(model_dir, *steps, "--checkpoint_every=500"), cwd=REPO,
                          env=script_environment(), capture_output=True, text=True, timeout=240, preexec_fn=small_files)
    assert failure_line(full).startswith(f"error: Could not write checkpoint {(step // 500 + 1) * 500} in ")
    assert f"the last complete one ({model_dir / 'checkpoints' / f'ckpt-{step}'}) is kept" in failure_line(full)
    assert latest_step(model_dir) == step and not leftovers(model_dir)

    resumed = run_command(train_lm_command(model_dir, *steps, "--checkpoint_every=500"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"(step {step} of 3000)" in resumed.stdout

    # Two Ctrl-C in a row: the second one does not wait for the checkpoint, and still no traceback.
    victim = start(train_lm_command(tmp_path / "twice", *steps))
    wait_for(lambda: (tmp_path / "twice" / "metrics.csv").exists())
    victim.send_signal(signal.SIGINT)
    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=240)
    assert victim.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("stopped: ")


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_and_none_usable_is_one_line(tmp_path):
    model_dir = tmp_path / "run"
    steps = ["--steps=4", "--checkpoint_every=2"]
    first = run_command(train_lm_command(model_dir, *steps))
    assert first.returncode == 0, first.stderr[-2000:]
    (data,) = (model_dir / "checkpoints").glob("ckpt-4.data-*")
    data.write_bytes(data.read_bytes()[:1000])

    again = run_command(train_lm_command(model_dir, *steps))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ckpt-4 is damaged" in again.stderr and "Traceback" not in again.stderr
    assert "resuming from" in again.stdout and "ckpt-2 (step 2 of 4)" in again.stdout
    assert digest(again) == digest(first)  # steps 3-4 redone exactly

    for index in (model_dir / "checkpoints").glob("*.index"):
        index.write_bytes(b"garbage")
    broken = run_command(train_lm_command(model_dir, *steps))
    assert failure_line(broken).startswith(f"error: No usable checkpoint in {model_dir / 'checkpoints'} (")


@pytest.mark.slow
def test_a_second_run_on_a_model_dir_is_refused_and_a_killed_ones_lock_is_not_stale(tmp_path):
    model_dir = tmp_path / "run"
    steps = ["--steps=6"]
    first = start(train_lm_command(model_dir, *steps))
    wait_for(lambda: (model_dir / "lock").exists() and "pid" in (model_dir / "lock").read_text())
    os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the directory
    try:
        second = run_command(train_lm_command(model_dir, *steps))
        assert failure_line(second) == (
            f"error: {model_dir} is in use by another run ({(model_dir / 'lock').read_text().strip()}); wait for "
            "it to finish, stop it, or use another directory."
        )
        assert f"pid {first.pid} on host {socket.gethostname()}" in failure_line(second)
    finally:
        first.kill()
        first.communicate()
    third = run_command(train_lm_command(model_dir, *steps))
    assert third.returncode == 0, third.stderr[-2000:]


@pytest.mark.slow
def test_flags_txt_refuses_a_changed_resume_before_reading_data_and_reruns_a_run_exactly(tmp_path):
    first = run_command(train_lm_command(tmp_path / "a", "--steps=4"))
    assert first.returncode == 0, first.stderr[-2000:]
    # The changed --dataset does not exist: the refusal comes first, so nothing was read.
    changed = run_command(train_lm_command(tmp_path / "a", "--steps=4", "--learning_rate=0.5",
                                           "--dataset=text:/nonexistent"))
    line = failure_line(changed)
    assert "holds a run with other flags (--dataset=builtin:pydoc -> --dataset=text:/nonexistent; " in line
    assert "--learning_rate=0.001 -> --learning_rate=0.5)" in line

    rerun = run_command([sys.executable, "-m", "experiments.train_lm", f"--flagfile={tmp_path / 'a' / 'flags.txt'}",
                 f"--model_dir={tmp_path / 'b'}", "--log_every=1"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert digest(rerun) == digest(first)



@pytest.mark.slow
def test_a_signal_on_one_worker_stops_every_worker_at_the_same_checkpointed_step(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = [
        start(train_lm_command(tmp_path / f"worker{index}", "--strategy=multi_worker", "--steps=3000", "--log_every=5",
                      "--checkpoint_every=1000"),
              TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        for index in range(2)
    ]
    try:
        wait_for(lambda: (tmp_path / "worker0" / "metrics.csv").exists())
        workers[1].send_signal(signal.SIGINT)  # the non-chief only
        errors = [worker.communicate(timeout=240)[1] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [143, 130], [e[-2000:] for e in errors]
    lines = [e.strip().splitlines()[-1] for e in errors]
    assert lines[0].startswith("stopped: Stopped because another worker was stopped at step ")
    assert lines[1].startswith("stopped: Stopped by SIGINT at step ")
    steps = [int(re.search(r"at step (\d+);", line).group(1)) for line in lines]
    assert steps[0] == steps[1] == latest_step(tmp_path / "worker0")
