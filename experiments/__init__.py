# Every script imports this package first: importing tf_lm here checks the Keras backend and makes TensorFlow's
# first import quiet (tf_lm/_backend.py), before any script's own `import tensorflow` would print its start-up lines.
import tf_lm  # noqa: F401
