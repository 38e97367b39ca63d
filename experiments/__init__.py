# Every script imports this package first: importing tf_lm here checks the Keras backend and makes TensorFlow's
# first import quiet (tf_lm/_backend.py), before any script's own `import tensorflow` would print its start-up lines.
import os
import signal
import sys


def _script_is_starting() -> bool:
    """Whether this process runs one of the scripts (`python -m experiments.<script>`), not a test importing them."""
    argv = sys.orig_argv
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith(f"{__name__}.")


# Loading TensorFlow takes seconds, and a Ctrl-C meanwhile would print a traceback through its import. A script
# writes nothing before its main runs, so the process just ends, with one line. stderr is duplicated first: while
# TensorFlow loads, descriptor 2 is discarded (tf_lm/_backend.py).
_stderr = None


def _interrupted_while_starting(signum, frame):
    del frame
    sys.stdout.flush()
    os.write(_stderr, b"stopped: interrupted while starting; nothing was written.\n")
    os._exit(128 + signum)


def started() -> None:
    """Ends the start-up's Ctrl-C handling (`experiments.flags.run_script` calls it before parsing flags): from
    then on a Ctrl-C raises KeyboardInterrupt, which the scripts report as a stop."""
    global _stderr
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _stderr is not None:
        os.close(_stderr)
        _stderr = None


if _script_is_starting() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    try:
        _stderr = os.dup(2)
    except OSError:  # no stderr (a closed descriptor 2): keep Python's default
        pass
    else:
        signal.signal(signal.SIGINT, _interrupted_while_starting)

import tf_lm  # noqa: E402,F401
