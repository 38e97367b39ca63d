"""experiments/prepare_data.py as a user runs it: SIGKILL then rerun gives the uninterrupted store; bad input."""

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, failure_line, files_of, run_module, script_environment

from tf_lm.data import CharTokenizer, TokenStore
from tf_lm.data.store import MANIFEST, PREPARING


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data.topics import topics

    directory = tmp_path_factory.mktemp("corpus")
    text = "".join(topics[key] for key in sorted(topics))
    for i in range(4):  # ~2 MB in 4 documents
        (directory / f"part{i}.txt").write_text(text[i * 1000:] + text[:i * 1000], encoding="utf-8")
    return f"--dataset=text:{directory}/*.txt"



def test_sigkill_mid_preparation_then_rerun_gives_the_uninterrupted_store(corpus, tmp_path):
    args = [corpus, "--shard_tokens=10000"]
    straight = run_module("experiments.prepare_data", *args, f"--output_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "train with --dataset=store:" in straight.stdout and "tokens/s" in straight.stderr

    killed = tmp_path / "killed"
    victim = subprocess.Popen([sys.executable, "-m", "experiments.prepare_data", *args, f"--output_dir={killed}"],
                              cwd=REPO, env=script_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / PREPARING / "train-00001.json").exists() and time.time() < deadline:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (killed / MANIFEST).exists(), "the preparation finished before it was killed"
    with pytest.raises(FileNotFoundError, match="did not finish"):
        TokenStore(str(killed))

    resumed = run_module("experiments.prepare_data", *args, f"--output_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert files_of(killed) == files_of(tmp_path / "straight")

    # Rerun on the finished store: it is read back whole and checked, which a shard of the right size but other ids
    # (no read of a window can tell) does not pass.
    shards = len(list(killed.glob("*.bin")))
    again = run_module("experiments.prepare_data", *args, f"--output_dir={killed}")
    assert again.returncode == 0 and f"; {shards} shard checksums verified; train with" in again.stdout, again.stderr
    shard = killed / "train-00001.bin"
    shard.write_bytes(bytes(shard.stat().st_size))
    damaged = run_module("experiments.prepare_data", *args, f"--output_dir={killed}")
    assert failure_line(damaged).startswith(f"error: Token store {str(killed)!r} is damaged: train-00001.bin does not "
                                            "hold the ids its manifest records"), damaged.stderr


@pytest.mark.slow
def test_tokenizer_dir_reuses_a_saved_tokenizer(corpus, tmp_path):
    first = run_module("experiments.prepare_data", corpus, "--tokenizer=bpe", "--bpe_vocab_size=300",
                       "--bpe_sample_mb=0.5", f"--output_dir={tmp_path / 'bpe'}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_module("experiments.prepare_data", corpus, f"--tokenizer_dir={tmp_path / 'bpe' / 'tokenizer'}",
                       f"--output_dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = TokenStore(str(tmp_path / "bpe")), TokenStore(str(tmp_path / "again"))
    assert a.fingerprint == b.fingerprint and a.num_tokens("train") == b.num_tokens("train")


def test_tokenizer_dir_takes_a_model_directory_and_an_hf_export_of_a_char_model(tmp_path):
    """train_lm suggests `prepare_data --tokenizer_dir` with the --init_from directory: a model directory (its
    tokenizer in model/tokenizer/) or an HF export, whose char tokenizer refuses an unseen character in one line."""
    (tmp_path / "text.txt").write_text("hello world\n" * 50, encoding="utf-8")
    tokenizer = CharTokenizer.from_text("hello world\n", end_of_text=True)
    tokenizer.save(str(tmp_path / "run" / "model" / "tokenizer"))  # where save_model_dir puts it
    result = run_module("experiments.prepare_data", f"--dataset=text:{tmp_path / 'text.txt'}",
                        f"--tokenizer_dir={tmp_path / 'run'}", f"--output_dir={tmp_path / 'store'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert TokenStore(str(tmp_path / "store")).tokenizer.fingerprint == tokenizer.fingerprint
    (tmp_path / "hf").mkdir()  # what export_hf writes for the tokenizer of a char model
    (tmp_path / "hf" / "tokenizer.json").write_text(tokenizer.to_hf().to_str(), encoding="utf-8")
    (tmp_path / "text.txt").write_text("hello world\nhello Zorld\n", encoding="utf-8")
    result = run_module("experiments.prepare_data", f"--dataset=text:{tmp_path / 'text.txt'}",
                        f"--tokenizer_dir={tmp_path / 'hf'}", f"--output_dir={tmp_path / 'store2'}")
    assert failure_line(result).startswith("error: Character 'Z' (U+005A) at position")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset=text:/no/such/*.txt"], "error: No files match 'text:/no/such/*.txt'"),
        (["--tokenizer=bpe", "--bpe_vocab_size=300", "--tokenizer_dir=/x"],
         "error: --tokenizer_dir brings its own tokenizer; drop --tokenizer, --bpe_vocab_size."),
        (["--shard_tokens=0"], "error: prepare_store needs --shard_tokens to be an integer >= 1. Received: "
                               "--shard_tokens=0"),
        (["--tokenizer=bpe", "--bpe_sample_mb=-1"], "error: --bpe_sample_mb must be at least 0.000001 (one byte). "
                                                    "Received: --bpe_sample_mb=-1.0"),
        (["--tokenizer=bpe", "--bpe_vocab_size=100"], "error: A BPE vocabulary needs --bpe_vocab_size to be an "
                                                      "integer >= 257 (256 bytes + <|endoftext|>). Received: "
                                                      "--bpe_vocab_size=100"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, args, message):
    result = run_module("experiments.prepare_data", *args, f"--output_dir={tmp_path / 'store'}")
    assert failure_line(result).startswith(message)
    assert not (tmp_path / "store").exists()


def test_preparing_a_local_store_never_loads_tensorflow(tmp_path):
    # TensorFlow costs ~600 MB of memory and 3 s of start-up that preparation does not need (issue 12's bound).
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['prepare_data', '--dataset=builtin:pydoc', '--output_dir={tmp_path / 'store'}']\n"
        "try:\n"
        "    runpy.run_module('experiments.prepare_data', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=script_environment(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "False False"
