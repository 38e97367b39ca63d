"""`experiments/flags.py`: `--help` of every script (its own flags, grouped, with defaults, exit 0; no TensorFlow
start-up noise), library errors written in flag terms, and runs stopped by a signal reported one way."""

import json
import re
import signal
import subprocess
import sys

import pytest
from absl import flags
from conftest import REPO, as_from_a_terminal, run_module, script_environment

import experiments.flags
from experiments.flags import UNGROUPED, in_flag_terms, one_line_errors, reported_stops
from tf_lm.fileio import EXPORT_MARKER

# Every module of experiments/ that runs as a script.
SCRIPTS = sorted(f"experiments.{path.stem}" for path in (REPO / "experiments").glob("*.py")
                 if 'if __name__ == "__main__":' in path.read_text())

# Runs each script with the arguments in argv[1] (JSON) in a fork of one process that imported TensorFlow once, so
# every script starts from the same fresh absl state; reports its exit code (or the exception it raised), its output
# and the flags it defined: every flag that was not there before it ran, whatever module it came from. With
# TensorFlow blocked instead, any import of it raises.
DRIVER = """
import contextlib, io, json, os, runpy, sys
from absl import app, flags
import experiments
{tensorflow}

app.define_help_flags()
before = set(flags.FLAGS)
report = {}
arguments = json.loads(sys.argv[1])
for script in sys.argv[2:]:
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(read_end)
        sys.argv = [script, *arguments]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_module(script, run_name="__main__", alter_sys=True)
                code = "returned without exiting"
            except SystemExit as exit:
                code = exit.code
            except Exception as error:
                code = f"raised {type(error).__name__}: {error}"
        defined = sorted(set(flags.FLAGS) - before)
        with os.fdopen(write_end, "w") as pipe:
            json.dump({"code": code, "help": out.getvalue(), "flags": defined}, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report[script] = json.load(pipe)
    os.wait()
print(json.dumps(report))
"""


def run_every_script(*arguments, scripts=SCRIPTS, tensorflow: bool = True) -> dict:
    # TensorFlow's own absl flags (test_srcdir, ...) are not the scripts'.
    prologue = "import tensorflow" if tensorflow else "sys.modules['tensorflow'] = None"
    result = subprocess.run([sys.executable, "-c", DRIVER.replace("{tensorflow}", prologue), json.dumps(arguments),
                             *scripts], cwd=REPO, env=script_environment(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_script_lists_all_its_flags_in_groups_and_exits_0():
    assert {"experiments.train_lm", "experiments.generate", "experiments.finetune_bert"} <= set(SCRIPTS)
    report = run_every_script("--help")
    for script in SCRIPTS:
        help_text, defined = report[script]["help"], report[script]["flags"]
        assert report[script]["code"] == 0, (script, report[script]["code"])
        assert defined, script
        listed = set(re.findall(r"^  --(?:\[no\])?(\w+)", help_text, flags=re.MULTILINE))
        assert set(defined) <= listed, f"{script} --help misses {sorted(set(defined) - listed)}"
        assert UNGROUPED not in help_text, f"{script} defines flags outside a flag_group:\n{help_text}"


def test_train_lm_help_groups_flags_with_defaults_and_no_start_up_noise():
    result = run_module("experiments.train_lm", "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("Trains a `TransformerLM`")
    headings = re.findall(r"^(\w[\w ]*):$", result.stdout, flags=re.MULTILINE)
    assert headings == ["model", "data", "optimisation", "run", "distribution", "transfer"]
    model = result.stdout.split("\nmodel:\n")[1].split("\n\n")[0]
    assert "  --preset=nano\n" in model and "  --block_size\n" in model
    assert "  --warmup_steps=100\n" in result.stdout.split("\noptimisation:\n")[1]
    # TensorFlow's C++ start-up lines ("I0000 00:00:... port.cc:153] oneDNN ...", "WARNING: All log messages
    # before absl::InitializeLog() ...") must not reach the user; nothing else is written either.
    assert result.stderr == ""


def test_library_errors_name_a_scripts_flags_as_flags_and_end_in_one_line():
    """tf_lm names arguments in backticks; a script's user sees the ones that are its flags as `--flag`."""
    script_flags = flags.FlagValues()
    flags.DEFINE_integer("max_length", 128, "", flag_values=script_flags, module_name="experiments.some_script")
    flags.DEFINE_string("tpu", None, "", flag_values=script_flags, module_name="experiments.some_script")
    flags.DEFINE_string("test_tmpdir", None, "", flag_values=script_flags, module_name="absl.testing")
    message = "lower `max_length`; pass `tpu=<name>`; `test_tmpdir` and `prepare_store` are not this script's flags"
    assert in_flag_terms(message, script_flags) == (
        "lower --max_length; pass --tpu=<name>; `test_tmpdir` and `prepare_store` are not this script's flags")
    with pytest.raises(SystemExit) as stop, one_line_errors():
        raise FileNotFoundError("No manifest.json in 'x'")
    assert stop.value.code == "error: No manifest.json in 'x'"
    with pytest.raises(KeyError), one_line_errors():  # not bad input: a bug keeps its traceback
        raise KeyError("x")


def test_running_out_of_memory_ends_a_script_in_one_line_naming_the_tensor():
    """TensorFlow's message runs over lines of graph node names; a script shows `batch_size` as its flag."""
    import tensorflow as tf

    with pytest.raises(SystemExit) as stop, one_line_errors():
        tf.random.stateless_uniform([1 << 50], seed=[0, 0], dtype=tf.int64, minval=0, maxval=9)
    assert stop.value.code == ("error: Out of memory: a tensor of shape [1125899906842624] (int64) does not fit on "
                               "CPU:0; lower `batch_size`, or use a smaller model or context.")
    with pytest.raises(SystemExit) as stop, one_line_errors():
        raise tf.errors.ResourceExhaustedError(None, None, "Out of memory while trying to allocate 8 bytes.\n\tx")
    assert stop.value.code == ("error: Out of memory: Out of memory while trying to allocate 8 bytes. x; lower "
                               "`batch_size`, or use a smaller model or context.")


def test_only_the_scripts_that_take_a_token_store_offer_one_for_dataset():
    from experiments.flags import define_data_flags

    for stores in (True, False):
        values = flags.FlagValues()
        define_data_flags(values, stores=stores)
        assert ("store:<dir>" in values["dataset"].help) is stores  # prepare_data writes stores; it reads none


@pytest.mark.parametrize("signum, status, line", [(signal.SIGINT, 130, "stopped: interrupted.\n"),
                                                  (signal.SIGTERM, 143, "stopped: terminated.\n")])
def test_a_ctrl_c_while_a_script_starts_is_one_line_and_writes_nothing(tmp_path, signum, status, line):
    """Loading TensorFlow takes seconds; a Ctrl-C meanwhile printed a traceback through its import, and a SIGTERM
    ended the process silently, skipping the `finally` blocks that remove a half-done write. (TensorFlow loads
    once the flags are good, while descriptor 2 is held back: the line must still reach stderr.)"""
    import time

    # A signal that comes too late (a machine loaded enough to delay this loop by the seconds the import takes)
    # meets a run of one step, so the test fails in seconds instead of waiting for a default run.
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 100)
    command = [sys.executable, "-m", "experiments.train_lm", f"--model_dir={tmp_path / 'run'}",
               f"--dataset=text:{tmp_path / 'corpus.txt'}", "--preset=nano", "--steps=1", "--warmup_steps=0"]
    process = subprocess.Popen(as_from_a_terminal(command), cwd=REPO, env=script_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # until TensorFlow's library is being loaded
        with open(f"/proc/{process.pid}/maps") as maps:
            if "libtensorflow_framework" in maps.read():
                break
        time.sleep(0.01)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr, stdout) == (status, line, "")
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_by_a_signal_ends_with_the_shells_status_for_it(capsys):
    """train_lm, finetune_bert and the demo report a stop one way: `stopped: <why>` and 128 + the signal."""
    from tf_lm.training import TrainingInterrupted

    with pytest.raises(SystemExit) as stop, reported_stops(TrainingInterrupted):
        raise TrainingInterrupted("Stopped by SIGTERM at step 3; rerun to resume.", signal.SIGTERM)
    assert stop.value.code == 143
    assert capsys.readouterr().err == "stopped: Stopped by SIGTERM at step 3; rerun to resume.\n"
    with pytest.raises(SystemExit) as stop, reported_stops(TrainingInterrupted):
        raise KeyboardInterrupt  # Ctrl-C before training started
    assert stop.value.code == 130
    assert capsys.readouterr().err.startswith("stopped: interrupted; rerunning the same command resumes")
    with pytest.raises(SystemExit) as stop, reported_stops(TrainingInterrupted):
        raise experiments.flags._Terminated(signal.SIGTERM)  # SIGTERM before training started, under run_script
    assert stop.value.code == 143
    assert capsys.readouterr().err.startswith("stopped: terminated; rerunning the same command resumes")
    with pytest.raises(ValueError), reported_stops(TrainingInterrupted):  # anything else is not a stop
        raise ValueError("x")


def test_an_unknown_flag_ends_every_script_in_one_error_line():
    # SystemExit with a message: Python prints it as the one line on stderr and exits with status 1.
    for script, outcome in run_every_script("--no_such_flag=1").items():
        assert outcome["code"] == "error: Unknown command line flag 'no_such_flag'", (script, outcome["code"])


def test_a_stray_argument_ends_every_script_that_takes_none_in_one_error_line():
    """A positional argument (say, a flag missing its --) is refused, not ignored; predict_bert reads sentences."""
    required = ["--model_dir=m", "--output_dir=o", "--export_dir=e"]  # any script's required flags
    undefined_ok = "--undefok=" + ",".join(flag[2:].split("=")[0] for flag in required)
    for script, outcome in run_every_script(undefined_ok, *required, "steps=5").items():
        if script == "experiments.predict_bert":
            assert outcome["code"] != "error: Unexpected arguments ['steps=5']; every option is a --flag.", script
        else:
            assert outcome["code"] == "error: Unexpected arguments ['steps=5']; every option is a --flag.", (
                script, outcome["code"])


def test_a_path_tensorflow_cannot_open_ends_every_script_in_one_error_line(tmp_path):
    """`s3://` (which TensorFlow no longer reads) stands for any path `tf.io.gfile` fails on, such as a `gs://`
    bucket that is unreachable or refused: each script's first path is named, as a missing local one would be."""
    table = tmp_path / "train.tsv"
    table.write_text("sentence\tlabel\na good film\t1\na bad film\t0\n")
    paths = ["--model_dir=s3://b/m", "--output_dir=s3://b/o", "--export_dir=s3://b/e"]
    runs = [(["--dataset=text:s3://b/x.txt"], ["demo", "evaluate_lm", "export", "export_hf", "generate",
                                                "prepare_data", "train_lm"]),
            ([f"--train_file={table}", f"--eval_file={table}", "--model=minilm"], ["finetune_bert"])]
    for extra, scripts in runs:
        arguments = [*paths, *extra]
        undefined_ok = "--undefok=" + ",".join(flag[2:].split("=")[0] for flag in arguments)
        outcomes = run_every_script(undefined_ok, *arguments, scripts=[f"experiments.{name}" for name in scripts])
        for script, outcome in outcomes.items():
            assert re.fullmatch(r"error: File system scheme 's3' not implemented \(file: 's3://b/\S+'\)",
                                str(outcome["code"])), (script, outcome["code"])


def test_help_and_bad_flags_are_answered_before_tensorflow_loads(tmp_path):
    """Loading TensorFlow takes seconds (train_lm took 6 s to refuse --batch_size=0): every script parses and
    checks its flags first, and train_lm also its flag combinations, a resume with other flags, its model_dir, its
    --init_from and its corpus."""
    for arguments in (["--help"], ["--no_such_flag=1"]):
        for script, outcome in run_every_script(*arguments, tensorflow=False).items():
            assert outcome["code"] in (0, "error: Unknown command line flag 'no_such_flag'"), (script, outcome["code"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "flags.txt").write_text("--steps=5\n")
    (tmp_path / "empty.txt").touch()
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / EXPORT_MARKER).write_text("{}")
    refused = {
        f"--model_dir={tmp_path / 'export'}": "holds an export",
        f"--model_dir={tmp_path / 'new'} --init_from={tmp_path / 'missing'}": "checkpoint directory",
        f"--model_dir={tmp_path / 'new'} --init_from={tmp_path}": "is neither a tf_lm model directory",
        f"--model_dir={tmp_path / 'new'} --dataset=store:{tmp_path / 'missing'}": "No manifest.json in token store",
        f"--model_dir={run} --steps=6": "holds a run with other flags (--steps=5 -> --steps=6;",
        f"--model_dir={tmp_path / 'new'} --bpe_vocab_size=300": "--bpe_vocab_size only apply with --tokenizer=bpe",
        f"--model_dir={tmp_path / 'new'} --dataset=text:{tmp_path / 'missing.txt'}": "No files match",
        f"--model_dir={tmp_path / 'new'} --dataset=text:{tmp_path / 'empty.txt'}": "is empty",
    }
    for arguments, message in refused.items():
        code = run_every_script(*arguments.split(), scripts=["experiments.train_lm"],
                                tensorflow=False)["experiments.train_lm"]["code"]
        assert code.startswith("error: ") and message in code, code
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.txt", "export", "run"]
