import os
import subprocess
import sys


def test_import_fails_in_one_sentence_on_another_backend():
    env = dict(os.environ, KERAS_BACKEND="numpy")
    result = subprocess.run([sys.executable, "-c", "import tf_lm"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "tf_lm needs Keras on the TensorFlow backend, but Keras is using 'numpy'" in result.stderr


def test_an_empty_keras_backend_means_the_default_as_in_keras():
    env = dict(os.environ, KERAS_BACKEND="")
    result = subprocess.run([sys.executable, "-c", "import tf_lm, keras; print(keras.backend.backend())"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tensorflow"


def test_imports_with_stderr_closed():
    """A daemon may run with descriptor 2 closed: quieting TensorFlow's start-up must not need it."""
    code = "import os; os.close(2); import tf_lm, tensorflow; print(tensorflow.constant(1).numpy())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "1"


def test_a_keras_home_with_a_tilde_is_read_as_keras_reads_it(tmp_path):
    (tmp_path / "kh").mkdir()
    (tmp_path / "kh" / "keras.json").write_text('{"backend": "numpy"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | {"HOME": str(tmp_path),
                                                                            "KERAS_HOME": "~/kh"}
    result = subprocess.run([sys.executable, "-c", "import tf_lm"], env=env, capture_output=True, text=True)
    assert "tf_lm needs Keras on the TensorFlow backend, but Keras is using 'numpy'" in result.stderr


def test_tensorflow_loads_quietly_after_a_lookup_and_leaves_the_log_level_to_children():
    # transformers looks TensorFlow up (find_spec) on import, before anything imports it.
    code = ("import importlib.util, os, tf_lm; importlib.util.find_spec('tensorflow'); import tensorflow; "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
    assert "oneDNN" not in result.stderr and "cuda" not in result.stderr.lower(), result.stderr


def _run_holding_stderr(ending: str) -> subprocess.CompletedProcess:
    code = ("import os; from tf_lm import _backend\n"
            "with _backend._stderr_held():\n"
            "    os.write(2, b'F0000 cpu_feature_guard: this CPU lacks AVX\\n')\n"
            f"    {ending}\n"
            "os.write(2, b'after\\n')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_what_tensorflow_writes_while_loading_is_dropped_once_it_has_loaded():
    result = _run_holding_stderr("pass")
    assert result.returncode == 0 and result.stderr == "after\n", result.stderr


def test_a_fatal_error_while_tensorflow_loads_still_reaches_stderr():
    """A fatal C++ error aborts the process before Python can restore stderr; its reason must not die with it."""
    result = _run_holding_stderr("os.abort()")
    assert result.returncode < 0
    assert "F0000 cpu_feature_guard: this CPU lacks AVX" in result.stderr and "after" not in result.stderr
