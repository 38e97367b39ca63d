"""Atomic writes: a reader (or a resumed run) sees the old file or directory, or the new one, never half of one.

One helper for every file and directory the project writes, on any `tf.io.gfile` path, and `gfile(path)`, the
filesystem of the modules that must run without TensorFlow (fileio itself, data sources, tokenizers, stores,
model artifacts): `tf.io.gfile` for `gs://`, `ram://` and other TensorFlow
filesystems, Python's own `os` for local paths (the same operations, so data preparation on local files runs
without loading TensorFlow). A file is written to a
hidden temporary sibling and renamed over its target. A directory is built in a hidden staging sibling and
swapped in by renames (old one aside, new one in, only then the old one deleted); it only ever replaces a
directory that is absent, empty, or recognisably one of ours (it holds a given marker file), so a mistyped path
never costs the user a file.

`directory_lock` gives one process at a time a directory (a training run's `--model_dir`).

On the local filesystem the new file, or every file of the new directory, is flushed to the disk (`fsync`)
before the rename publishes it, and the parent directory after: a power cut never leaves the name on an empty or
partial file. Renames are atomic on local POSIX filesystems. On object stores (`gs://`) TensorFlow renames by
copying each object, so a crash in the middle of a swap can leave a partial directory at the target; the previous
one then still exists under its `.old-` name beside it.
"""

from __future__ import annotations

import contextlib
import functools
import glob as globbing
import json
import os
import shutil
import socket
import time
import types
import uuid
from collections.abc import Iterator

import filelock

LOCK_FILE = "lock"
# Written into every directory exported in another project's format (an HF checkpoint, a SavedModel): an export
# replaces a directory holding it, and never one without it, such as a downloaded HF model, whose config.json and
# model.safetensors any export would also have.
EXPORT_MARKER = "tf_lm_export.json"


def is_local(path: str) -> bool:
    """Whether `path` is a plain local path, which Python's `os` handles. A `file://` URL is not: it goes through
    `tf.io.gfile`, as every `scheme://` path does."""
    return "://" not in path


def _local_rename(source: str, target: str, overwrite: bool = False) -> None:
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"Cannot rename {source} to {target}: it exists.")
    os.replace(source, target)


def _local_stat(path: str) -> types.SimpleNamespace:
    status = os.stat(path)
    return types.SimpleNamespace(length=status.st_size, mtime_nsec=status.st_mtime_ns)


# The subset of `tf.io.gfile` this project uses, with its signatures, on the local filesystem.
_LOCAL_FILES = types.SimpleNamespace(
    GFile=open, exists=os.path.exists, isdir=os.path.isdir, listdir=os.listdir, glob=globbing.glob,
    makedirs=lambda path: os.makedirs(path, exist_ok=True), remove=os.remove, rmtree=shutil.rmtree,
    rename=_local_rename, stat=_local_stat, walk=os.walk,
)


def _raising_os_errors(operation):
    """`operation` of `tf.io.gfile`, raising what Python's `os` raises where it raises a TensorFlow error: a missing
    file is a `FileNotFoundError`, a refused one a `PermissionError`, an unreachable bucket or an unknown scheme
    (`s3://`, which TensorFlow no longer reads) an `OSError`, each in one line."""
    import tensorflow as tf

    @functools.wraps(operation)
    def call(*args, **kwargs):
        try:
            return operation(*args, **kwargs)
        except tf.errors.OpError as error:
            kind = {tf.errors.NotFoundError: FileNotFoundError,
                    tf.errors.PermissionDeniedError: PermissionError}.get(type(error), OSError)
            raise kind(" ".join(error.message.split())) from None

    return call


class _TensorFlowFile:
    """A `tf.io.gfile.GFile` whose every method raises `OSError` as a Python file's does."""

    def __init__(self, *args, **kwargs):
        import tensorflow as tf

        self._file = _raising_os_errors(tf.io.gfile.GFile)(*args, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self._file, name)
        return _raising_os_errors(value) if callable(value) else value

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _TensorFlowFiles:
    """`tf.io.gfile` with Python's errors (see `_raising_os_errors`): callers handle one kind of error on every
    filesystem, and a script reports a `gs://` path it cannot reach as it reports a missing local file."""

    GFile = _TensorFlowFile

    def __getattr__(self, name: str):
        import tensorflow as tf

        return _raising_os_errors(getattr(tf.io.gfile, name))


_TENSORFLOW_FILES = _TensorFlowFiles()


def gfile(path: str):
    """The filesystem of `path`: `tf.io.gfile` (imported on first use), its errors raised as `OSError`, or its
    local equivalent for local paths.

    Example:
    >>> gfile("runs/x").exists("runs/x/flags.txt")  # doctest: +SKIP
    """
    return _LOCAL_FILES if is_local(path) else _TENSORFLOW_FILES


def _sibling(path: str, kind: str) -> str:
    # Hidden, and unique per call, so neither a glob over the directory nor a concurrent writer picks it up.
    # Split at the last "/" as written: os.path would fold the "//" of "ram://name" into "ram:/".
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}.{kind}-{uuid.uuid4().hex[:12]}"


def _sync(path: str) -> None:
    """Flushes a local file, or a directory's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_tree(directory: str) -> None:
    for root, _, names in os.walk(directory):
        for name in names:
            _sync(os.path.join(root, name))
        _sync(root)


def not_a_directory(path: str) -> str | None:
    """Why `path` cannot be read as a directory ("does not exist", "is a file, not a directory"), or None."""
    files = gfile(path)
    if files.isdir(path):
        return None
    return "is a file, not a directory" if files.exists(path) else "does not exist"


def files_within(paths, directory: str) -> list[str]:
    """Those of `paths` that lie inside `directory` (compared as `normalise_path` spells them)."""
    root = normalise_path(directory) + "/"
    return [path for path in paths if normalise_path(path).startswith(root)]


def normalise_path(path: str) -> str:
    """`path` in the one spelling every writer and reader of it uses: no trailing "/" (`ram://run/` is
    `ram://run`, whose `run//checkpoints` would be another directory), and a local path absolute with its symlinks
    resolved.

    Example:
    >>> normalise_path("gs://bucket/run/")
    'gs://bucket/run'
    """
    if is_local(path):
        # abspath makes "." and "runs/x/" name the directory itself, so its parent and siblings are well defined;
        # realpath makes a symlinked directory's siblings those of the real one, so a swap replaces the real
        # directory on its own filesystem and the link keeps pointing at it.
        return os.path.realpath(path)
    scheme, _, rest = path.partition("://")
    return f"{scheme}://{rest.rstrip('/')}"


def atomic_write(path: str, data: bytes | str) -> None:
    """Writes `data` to `path` through a temporary sibling renamed over it; creates missing parent directories.

    Args:
        path: str, any `tf.io.gfile` path (local, `gs://`, `ram://`).
        data: bytes, or str (written as UTF-8).

    Raises:
        OSError: if the filesystem fails (e.g. a full disk); the temporary file is removed first and `path`
            keeps its previous content.

    Example:
    >>> atomic_write("runs/x/flags.txt", "--steps=100\\n")  # doctest: +SKIP
    """
    path = normalise_path(path)
    temporary = _sibling(path, "tmp")
    files = gfile(path)
    try:
        files.makedirs(os.path.dirname(path))
        with files.GFile(temporary, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if files is _LOCAL_FILES:
            _sync(temporary)
        files.rename(temporary, path, overwrite=True)
        if files is _LOCAL_FILES:
            _sync(os.path.dirname(path))
    except BaseException as error:  # a full disk, Ctrl-C or SIGTERM: leave no temporary file behind
        with contextlib.suppress(Exception):
            if files.exists(temporary):
                files.remove(temporary)
        if files is not _LOCAL_FILES and isinstance(error, OSError):  # name the file being written, not its sibling
            raise type(error)(f"Could not write {path}: {error}") from None
        raise


def write_file(path: str, data: bytes | str) -> None:
    """Writes `data` to `path` in place, on any filesystem: for a file inside a staging directory, which
    `atomic_directory` publishes (and syncs) whole. An existing file is replaced."""
    files = gfile(path)
    if files is not _LOCAL_FILES and files.exists(path):
        files.remove(path)  # ram:// appends to a file opened for writing again
    with files.GFile(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    """The bytes of the file `path`, on any filesystem.

    Raises:
        OSError: if it cannot be read (FileNotFoundError if it is missing), naming it.
    """
    try:
        with gfile(path).GFile(path, "rb") as f:
            return f.read()
    except OSError as error:
        if is_local(path):  # Python's message names the file
            raise
        raise type(error)(f"Could not read {path}: {error}") from None


def read_text(path: str) -> str:
    """The UTF-8 text of the file `path`, on any filesystem.

    Raises:
        OSError: if it cannot be read (FileNotFoundError if it is missing), naming it.
        ValueError: if it is not UTF-8 text (a damaged file), naming it.
    """
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is damaged: it is not UTF-8 text ({error.reason}); restore or remove it.") from None


def read_json(path: str):
    """The JSON value in the file `path`, on any filesystem.

    Raises:
        OSError: if it cannot be read (FileNotFoundError if it is missing), naming it.
        ValueError: if it is not valid JSON (a damaged file, e.g. cut short by a full disk), naming it.

    Example:
    >>> read_json("runs/x/run_config.json")["train"]["steps"]  # doctest: +SKIP
    5000
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is damaged: it is not valid JSON ({error}); restore or remove it.") from None


def read_json_object(path: str) -> dict:
    """`read_json` of a file that must hold a JSON object (a config, a manifest, a note).

    Raises:
        OSError: as `read_json`.
        ValueError: if it is not valid JSON, or valid JSON of another kind (`[]`, `null`), naming it.
    """
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path} is damaged: it holds {json_kind(value)}, not an object; restore or remove it.")
    return value


def damaged_json(path: str, what: str) -> ValueError:
    """The error for the JSON file `path` holding a value that its readers cannot take (`what` says which)."""
    return ValueError(f"{path} is damaged: {what}; restore it, or correct that value.")


def check_json_types(path: str, values: dict, types: dict, within: str | None = None) -> None:
    """Raises `damaged_json` for the first key of `types` (`key -> (is_valid, what it must hold)`) that `values`,
    read from `path` (its object `within`, if named), holds with a value `is_valid` refuses; absent keys are not
    checked."""
    for key, (is_valid, expected) in types.items():
        if key in values and not is_valid(values[key]):
            name = key if within is None else f"{within} {key}"
            raise damaged_json(path, f"its {name} is {values[key]!r}, not {expected}")


def json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's words ("an array", "null"), for messages about a damaged file."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds = ((dict, "an object"), (list, "an array"), (str, "a string"), ((int, float), "a number"))
    return next(kind for types, kind in kinds if isinstance(value, types))


@contextlib.contextmanager
def safetensors_errors(path: str) -> Iterator[None]:
    """Reads of the safetensors file `path` inside this context raise one ValueError naming it for a damaged file
    (cut short by an interrupted download or copy, or a header that is not safetensors'). `SafetensorError` is
    neither an OSError nor a ValueError, so the scripts would otherwise print it as a traceback.
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        raise ValueError(f"{path} is damaged or incomplete ({error}); replace it with an intact copy.") from None


def write_export_marker(directory: str, exported_by: str, kind: str, **details) -> None:
    """Marks `directory` (an export's staging directory) as one of ours: `EXPORT_MARKER` names what wrote it and
    the `kind` of output it is (see `check_replaceable`); `atomic_directory` adds the files it holds."""
    marker = {"kind": kind, "exported_by": exported_by, **details}
    write_file(os.path.join(directory, EXPORT_MARKER), json.dumps(marker, indent=2) + "\n")


def recorded_tokenizer(directory: str) -> str | None:
    """The tokenizer fingerprint the `EXPORT_MARKER` in `directory` records, so a reader can tell the tokenizer
    files it finds from those written (None: no marker, or one written before markers recorded it).

    Raises:
        ValueError: if the marker is damaged (not a JSON object, or a fingerprint that is not a string).
    """
    path = os.path.join(directory, EXPORT_MARKER)
    if not gfile(path).exists(path):
        return None
    fingerprint = read_json_object(path).get("tokenizer_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"{path} is damaged: its tokenizer_fingerprint is {json_kind(fingerprint)}, not a string; "
                         "write the directory again.")
    return fingerprint


def _files_below(path: str) -> list[str]:
    """Every file under the directory `path`, as a path relative to it ("variables/variables.index")."""
    files = gfile(path)
    found = []
    for root, _, names in files.walk(path):
        folder = root[len(path):].strip("/")
        found.extend(f"{folder}/{name}" if folder else name for name in names)
    return sorted(found)


def _is_written(name: str, written: list[str]) -> bool:
    """Whether the file `name` (relative) is one an export's marker lists, itself or (a marker written before
    files were listed one by one, which named only the top level) by a folder above it."""
    parts = name.split("/")
    return any("/".join(parts[:depth]) in written for depth in range(1, len(parts) + 1))


def check_replaceable(path: str, marker: str, kind: str | None = None) -> None:
    """Raises ValueError unless `path` is absent, an empty directory, or a directory holding the file `marker`
    (and, with `kind`, not an `EXPORT_MARKER` that records another kind; nor one that lists the files written,
    beside a file added since).

    Args:
        path: str, the directory about to be (re)written.
        marker: str, a file name that only directories written by this project hold.
        kind: str or None. The kind of output about to be written ("SavedModel export", ...): our outputs all carry
            `EXPORT_MARKER`, so without it an export aimed at a trained model's `model/` would replace the model.
    """
    path = normalise_path(path)
    files = gfile(path)
    if not files.exists(path):
        return
    if not files.isdir(path):
        raise ValueError(f"{path} is a file, not a directory; choose a new or empty directory.")
    if files.listdir(path) and not files.exists(os.path.join(path, marker)):
        raise ValueError(
            f"{path} is not empty and holds no {marker}, so it is not one of ours and was left untouched; "
            "choose a new or empty directory."
        )
    if marker != EXPORT_MARKER or not files.exists(os.path.join(path, marker)):  # not an export, or empty
        return
    # A damaged marker is refused like a foreign directory: what the directory holds besides our files is unknown.
    recorded = read_json_object(os.path.join(path, marker))
    found = recorded.get("kind") if kind is not None else None  # None: a marker that predates kinds
    if found not in (None, kind):
        raise ValueError(f"{path} holds a {found}, which writing a {kind} there would replace, so it was left "
                         "untouched; choose a new or empty directory.")
    # A file added since the export (llama.cpp's converter writes its .gguf into the model directory, a training
    # run into any --model_dir, a user's notes into variables/) would be deleted with it. A marker that predates
    # the list records none.
    written = recorded.get("files")
    if written is not None and not (isinstance(written, list) and all(isinstance(name, str) for name in written)):
        raise ValueError(f"{os.path.join(path, marker)} is damaged: its files is {json_kind(written)}, not a list of "
                         "file names, so the directory was left untouched; choose a new or empty directory.")
    added = ([name for name in _files_below(path) if name != marker and not _is_written(name, written)]
             if written is not None else [])
    if added:
        raise ValueError(f"{path} is an earlier {found or 'export'} but also holds {added[0]!r}, which replacing it "
                         "would delete, so it was left untouched; move that file elsewhere, or choose another "
                         "directory.")


@contextlib.contextmanager
def atomic_directory(path: str, marker: str, kind: str | None = None) -> Iterator[str]:
    """Yields a staging directory beside `path`; on a clean exit swaps it into place as `path`.

    The swap renames the old `path` aside, renames the staging directory to `path`, and only then deletes the
    old one. If the body raises, the staging directory is deleted and `path` is untouched.

    Args:
        path: str, the directory to create or replace (any `tf.io.gfile` path that supports renaming
            directories: local, `gs://`).
        marker: str, a file name only directories written by this project hold. `path` is replaced only if it is
            absent, empty, or holds `marker`; the staging directory must hold it too on exit. An `EXPORT_MARKER`
            then also lists the files written, and a `path` holding any other (added since) is not replaced.
        kind: str or None. The kind of output written, refused over another kind (see `check_replaceable`).

    Raises:
        ValueError: at entry, if `path` is something else (nothing is touched); at exit, if the body did not
            write `marker` (the staging directory is deleted).

    Example:
    >>> with atomic_directory("exports/shakespeare", marker="saved_model.pb") as staging:  # doctest: +SKIP
    ...     tf.saved_model.save(module, staging)
    """
    path = normalise_path(path)
    check_replaceable(path, marker, kind)
    staging = _sibling(path, "staging")
    files = gfile(path)
    files.makedirs(staging)
    try:
        yield staging
        if not files.exists(os.path.join(staging, marker)):
            raise ValueError(f"The new {path} holds no {marker}; nothing was replaced.")
        if marker == EXPORT_MARKER:  # the files it wrote, so a later export can tell the ones added since
            recorded = read_json_object(os.path.join(staging, marker))
            recorded["files"] = [name for name in _files_below(staging) if name != marker]
            write_file(os.path.join(staging, marker), json.dumps(recorded, indent=2) + "\n")
        if files is _LOCAL_FILES:
            _sync_tree(staging)
    except BaseException:
        with contextlib.suppress(Exception):
            files.rmtree(staging)
        raise
    _swap_in(staging, path)
    if files is _LOCAL_FILES:
        _sync(os.path.dirname(path))


def _swap_in(staging: str, path: str) -> None:
    files = gfile(path)
    retired = _sibling(path, "old") if files.exists(path) else None
    try:
        if retired is not None:
            _rename_tree(path, retired)
        try:
            _rename_tree(staging, path)
        except BaseException:
            if retired is not None:
                _rename_tree(retired, path)
            raise
    except BaseException:
        with contextlib.suppress(Exception):
            files.rmtree(staging)
        raise
    if retired is not None:
        files.rmtree(retired)


def _rename_tree(source: str, target: str) -> None:
    """Renames directory `source` to `target`, children included.

    Some TensorFlow filesystems (`ram://`) rename a directory's own entry but leave its files under the old name;
    there the files are renamed one by one.
    """
    files = gfile(source)
    files.rename(source, target)
    if not files.exists(source):
        return
    for root, _, names in list(files.walk(source)):
        moved = target + root[len(source):]
        files.makedirs(moved)
        for name in names:
            files.rename(os.path.join(root, name), os.path.join(moved, name))
    try:
        files.rmtree(source)
    except Exception:  # ram:// reports NotFound for its leftover empty entries yet removes them
        if files.exists(source):
            raise


@contextlib.contextmanager
def directory_lock(directory: str) -> Iterator[None]:
    """Holds an exclusive lock on `directory` (created if missing) while the body runs.

    The lock is an OS file lock (`filelock`, `flock(2)`) on `<directory>/lock`, which also records the holder's
    pid and host while it holds it. The kernel drops it when the holder dies, so a killed run never blocks the
    next one. If this call created `directory` and the body leaves nothing else in it, the directory is removed
    again, and so are the parents this call created that are still empty.
    Object stores (`gs://`) have no such lock: there the body runs unlocked. A `file://` URL locks its local path.

    Args:
        directory: str, the directory to own.

    Raises:
        ValueError: if another process holds the lock (the message names its pid and host).

    Example:
    >>> with directory_lock("runs/x"):  # doctest: +SKIP
    ...     train()
    """
    directory = directory.removeprefix("file://")
    if not is_local(directory):
        yield
        return
    directory = normalise_path(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} is a file, not a directory; choose a new or empty directory.")
    created = []  # `directory` and the parents this call makes, innermost first
    missing = directory
    while not os.path.exists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        with open(path) as f:
            holder = f.read().strip() or "a process that has not written its pid yet"
        raise ValueError(
            f"{directory} is in use by another run ({holder}); wait for it to finish, stop it, or use another "
            "directory."
        ) from None
    try:
        with open(path, "w") as f:  # only the holder writes; a contender only reads it for its message
            f.write(f"pid {os.getpid()} on host {socket.gethostname()}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        yield
    finally:
        with open(path, "w"):  # still the holder: a finished run leaves no line that reads as a live holder
            pass
        lock.release()
        if created and os.listdir(directory) == [LOCK_FILE]:
            os.remove(path)
            for empty in created:
                try:
                    os.rmdir(empty)
                except OSError:  # something else was put there meanwhile: it stays, and so do its parents
                    break
