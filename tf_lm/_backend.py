"""Checks the Keras backend without importing Keras, and makes the first `import tensorflow` quiet.

The configured backend is read the way Keras reads it (KERAS_BACKEND, then keras.json), because importing Keras
with, say, the JAX backend can itself fail when JAX is absent. Nothing here imports TensorFlow: a process that
only prepares data (`tf_lm.data.prepare_store` on local files) never loads it, which saves ~600 MB of memory and
3 s of start-up.
"""

import contextlib
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys


def _configured_backend() -> str:
    if "keras" in sys.modules:  # already imported: its backend is fixed, whatever the configuration says now
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):  # Keras ignores an empty one
        return os.environ["KERAS_BACKEND"]
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home is None:  # as Keras: ~/.keras, or /tmp/.keras when the home directory is read-only
        home = os.path.expanduser("~")
        keras_home = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.expanduser(os.path.join(keras_home, "keras.json"))) as f:  # KERAS_HOME="~/kh", as Keras
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


# The keeper holds what is written to descriptor 2 while TensorFlow loads. Told that loading finished (the mark),
# it drops what came before; if the process dies first (a fatal C++ error aborts it), it writes everything out,
# so the reason is not lost with the process.
_DONE_MARK = b"\0tf_lm: tensorflow loaded\0"
_KEEPER = f"""
import os, sys
chunks = []
while chunk := os.read(0, 65536):
    chunks.append(chunk)
held = b"".join(chunks)
mark = {_DONE_MARK!r}
sys.stderr.buffer.write(held.partition(mark)[2] if mark in held else held)
"""


def _start_keeper(stderr: int) -> tuple[subprocess.Popen | None, int]:
    """Returns the keeper and the descriptor that feeds it; with no pipe or process to spare, no keeper and null."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None, os.open(os.devnull, os.O_WRONLY)
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _KEEPER], stdin=read_end,
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True), write_end  # a Ctrl-C for the group is not for it
    except OSError:
        os.close(write_end)
        return None, os.open(os.devnull, os.O_WRONLY)
    finally:
        os.close(read_end)


@contextlib.contextmanager
def _stderr_held():
    """Hands descriptor 2 to a keeper process: dropped if the block finishes or raises, written out if we die."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr (a daemon's closed descriptor 2): nothing to hold
        yield
        return
    keeper, write_end = _start_keeper(saved)
    os.dup2(write_end, 2)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.write(2, _DONE_MARK)
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
        if keeper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                keeper.wait(timeout=10)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with its C++ start-up log lines held back.

    TF_CPP_MIN_LOG_LEVEL=2 (the default while TensorFlow loads) silences TensorFlow's own INFO and WARNING logs, but
    its 8-13 start-up lines (oneDNN, CUDA drivers, CPU features, cuInit) come from C++ absl logging before it is
    initialised, which writes to stderr whatever the level; so stderr (file descriptor 2) is held while TensorFlow
    loads and finds its devices, and dropped once it has. Python errors still surface: they are raised after stderr
    is restored; and a fatal C++ error, which aborts the process (a CPU without the instructions TensorFlow was
    built for), reaches stderr through the keeper process that held it. Set TF_CPP_MIN_LOG_LEVEL=0 to see the lines.
    The variable is unset again afterwards, so the process's children log as they would have (TensorFlow has read
    its level by then).
    """

    def __init__(self, loader, finder):
        self._loader, self._finder = loader, finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with contextlib.suppress(ValueError):  # TensorFlow is being imported: the finder's work is done
            sys.meta_path.remove(self._finder)
        defaulted = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
        quiet = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2").strip() not in ("0", "1")
        try:
            with _stderr_held() if quiet else contextlib.nullcontext():
                self._loader.exec_module(module)
                # Listing the physical devices runs the CUDA probe (its cuInit error line) now, without
                # initialising the runtime, so logical-device and threading settings made later still apply.
                module.config.list_physical_devices()
        finally:
            if defaulted:
                os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
            module.__loader__ = module.__spec__.loader = self._loader  # TensorFlow as if imported plainly


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds TensorFlow where the import system would, and hands it `_QuietLoader`, until TensorFlow is imported.

    A mere lookup (`importlib.util.find_spec("tensorflow")`, as transformers checks what is installed) leaves the
    finder in place; the loader removes it when the import runs.
    """

    def __init__(self):
        self._looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # the lookup below asks every finder again, this one included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None and "tensorflow" not in sys.modules:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


def require_tensorflow_backend() -> None:
    """Raises ImportError unless Keras is (or will be) on the TensorFlow backend; TensorFlow will import quietly.

    Call it before anything imports Keras or TensorFlow (`tf_lm/__init__.py` does).
    """
    backend = _configured_backend()
    if backend != "tensorflow":
        raise ImportError(
            f"tf_lm needs Keras on the TensorFlow backend, but Keras is using '{backend}'; "
            "set KERAS_BACKEND=tensorflow (or edit ~/.keras/keras.json) and retry."
        )
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
