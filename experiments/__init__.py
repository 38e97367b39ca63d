# Every script imports this package first: importing tf_lm here checks the Keras backend and makes TensorFlow's
# first import quiet (tf_lm/_backend.py). The scripts load TensorFlow only in their main, once their flags are
# good, where a Ctrl-C while it loads ends the script in one line (experiments.flags.run_script).
import tf_lm  # noqa: F401
