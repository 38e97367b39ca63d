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
