"""Atomic writes: a reader (or a resumed run) sees the old file or directory, or the new one, never half of one.

One helper for every file and directory the project writes, on any `tf.io.gfile` path. A file is written to a
hidden temporary sibling and renamed over its target. A directory is built in a hidden staging sibling and
swapped in by renames (old one aside, new one in, only then the old one deleted); it only ever replaces a
directory that is absent, empty, or recognisably one of ours (it holds a given marker file), so a mistyped path
never costs the user a file.

Renames are atomic on local POSIX filesystems. On object stores (`gs://`) TensorFlow renames by copying each
object, so a crash in the middle of a swap can leave a partial directory at the target; the previous one then
still exists under its `.old-` name beside it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import tensorflow as tf


def is_local(path: str) -> bool:
    """Whether `path` is on the local filesystem (no `scheme://` prefix, or `file://`)."""
    return "://" not in path or path.startswith("file://")


def _sibling(path: str, kind: str) -> str:
    # Hidden, and unique per call, so neither a glob over the directory nor a concurrent writer picks it up.
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{kind}-{uuid.uuid4().hex[:12]}")


def _normalise(path: str) -> str:
    # abspath makes "." and "runs/x/" name the directory itself, so its parent and siblings are well defined.
    return os.path.abspath(path) if is_local(path) and not path.startswith("file://") else path.rstrip("/")


def atomic_write(path: str, data: bytes | str) -> None:
    """Writes `data` to `path` through a temporary sibling renamed over it; creates missing parent directories.

    Args:
        path: str, any `tf.io.gfile` path (local, `gs://`, `ram://`).
        data: bytes, or str (written as UTF-8).

    Raises:
        OSError / tf.errors.OpError: whatever the filesystem raises (e.g. a full disk); the temporary file is
            removed first and `path` keeps its previous content.

    Example:
    >>> atomic_write("runs/x/flags.txt", "--steps=100\\n")  # doctest: +SKIP
    """
    path = _normalise(path)
    tf.io.gfile.makedirs(os.path.dirname(path))
    temporary = _sibling(path, "tmp")
    try:
        with tf.io.gfile.GFile(temporary, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:  # a full disk, Ctrl-C or SIGTERM: leave no temporary file behind
        with contextlib.suppress(Exception):
            if tf.io.gfile.exists(temporary):
                tf.io.gfile.remove(temporary)
        raise


def check_replaceable(path: str, marker: str) -> None:
    """Raises ValueError unless `path` is absent, an empty directory, or a directory holding the file `marker`.

    Args:
        path: str, the directory about to be (re)written.
        marker: str, a file name that only directories written by this project hold.
    """
    path = _normalise(path)
    if not tf.io.gfile.exists(path):
        return
    if not tf.io.gfile.isdir(path):
        raise ValueError(f"{path} is a file, not a directory; choose a new or empty directory.")
    if tf.io.gfile.listdir(path) and not tf.io.gfile.exists(os.path.join(path, marker)):
        raise ValueError(
            f"{path} is not empty and holds no {marker}, so it is not one of ours and was left untouched; "
            "choose a new or empty directory."
        )


@contextlib.contextmanager
def atomic_directory(path: str, marker: str) -> Iterator[str]:
    """Yields a staging directory beside `path`; on a clean exit swaps it into place as `path`.

    The swap renames the old `path` aside, renames the staging directory to `path`, and only then deletes the
    old one. If the body raises, the staging directory is deleted and `path` is untouched.

    Args:
        path: str, the directory to create or replace (any `tf.io.gfile` path that supports renaming
            directories: local, `gs://`).
        marker: str, a file name only directories written by this project hold. `path` is replaced only if it is
            absent, empty, or holds `marker`; the staging directory must hold it too on exit.

    Raises:
        ValueError: at entry, if `path` is something else (nothing is touched); at exit, if the body did not
            write `marker` (the staging directory is deleted).

    Example:
    >>> with atomic_directory("exports/shakespeare", marker="saved_model.pb") as staging:  # doctest: +SKIP
    ...     tf.saved_model.save(module, staging)
    """
    path = _normalise(path)
    check_replaceable(path, marker)
    staging = _sibling(path, "staging")
    tf.io.gfile.makedirs(staging)
    try:
        yield staging
        if not tf.io.gfile.exists(os.path.join(staging, marker)):
            raise ValueError(f"The new {path} holds no {marker}; nothing was replaced.")
    except BaseException:
        with contextlib.suppress(Exception):
            tf.io.gfile.rmtree(staging)
        raise
    _swap_in(staging, path)


def _swap_in(staging: str, path: str) -> None:
    retired = _sibling(path, "old") if tf.io.gfile.exists(path) else None
    try:
        if retired is not None:
            tf.io.gfile.rename(path, retired)
        try:
            tf.io.gfile.rename(staging, path)
        except BaseException:
            if retired is not None:
                tf.io.gfile.rename(retired, path)
            raise
    except BaseException:
        with contextlib.suppress(Exception):
            tf.io.gfile.rmtree(staging)
        raise
    if retired is not None:
        tf.io.gfile.rmtree(retired)
