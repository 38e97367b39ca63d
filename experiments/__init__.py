# Every script imports this package first: importing tf_lm here loads TensorFlow without its start-up log lines
# (tf_lm/_backend.py), before any script's own `import tensorflow` would print them.
import tf_lm  # noqa: F401
