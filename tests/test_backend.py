import os
import subprocess
import sys


def test_import_fails_in_one_sentence_on_another_backend():
    env = dict(os.environ, KERAS_BACKEND="numpy")
    result = subprocess.run([sys.executable, "-c", "import tf_lm"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "tf_lm needs Keras on the TensorFlow backend, but Keras is using 'numpy'" in result.stderr
