"""Corpus sources: a source string becomes train and validation text.

Schemes:
- `builtin:pydoc` (the default): the English text of CPython's `pydoc_data.topics`, on every machine, offline.
- `text:<glob>`: local UTF-8 files, joined in sorted path order.
- `tfds:<name>`: a TFDS dataset whose examples hold a text feature, e.g. `tfds:tiny_shakespeare`.

A source with its own splits (TFDS) uses them; otherwise the last `validation_fraction` of the text is the
validation split, contiguous, like the classic char-level setup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re

SCHEMES = ("builtin", "text", "tfds")
BUILTIN_CORPORA = ("pydoc",)
DEFAULT_SOURCE = "builtin:pydoc"
# Separates the examples (documents) of a TFDS split once they are joined into one text.
DOCUMENT_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Train and validation text of one source.

    Args:
        train: str. The training text.
        validation: str. The held-out text.
        name: str. The source string it came from (part of the token cache key).
    """

    train: str
    validation: str
    name: str

    def __repr__(self) -> str:  # The texts are megabytes; show their sizes, not their contents.
        return f"Corpus(name={self.name!r}, train={len(self.train):,} chars, validation={len(self.validation):,} chars)"


def read_source(source: str = DEFAULT_SOURCE, *, validation_fraction: float = 0.1, tfds_data_dir: str | None = None,
                tfds_manual_dir: str | None = None, tfds_train_split: str = "train",
                tfds_validation_split: str = "validation", tfds_text_key: str = "text") -> Corpus:
    """Reads `source` into a `Corpus`.

    Args:
        source: str, default "builtin:pydoc". `builtin:pydoc`, `text:<glob>` or `tfds:<name>`.
        validation_fraction: float in (0, 1), default 0.1. Share of the text held out (from its end) when the
            source has no validation split of its own.
        tfds_data_dir: str or None. TFDS `data_dir` (where prepared datasets live); None is TFDS's default
            (~/tensorflow_datasets).
        tfds_manual_dir: str or None. A directory holding the dataset's downloaded files, so TFDS can prepare it
            offline (e.g. the directory of Tiny Shakespeare's `input.txt`).
        tfds_train_split: str, default "train". TFDS split (slices such as "train[:90%]" work) for training.
        tfds_validation_split: str, default "validation". TFDS split for validation; if the dataset lists no split
            of that name, the last `validation_fraction` of the train text is used instead.
        tfds_text_key: str, default "text". The feature of each example that holds its text.

    Returns:
        A `Corpus` named `source`.

    Raises:
        ValueError: on an unknown scheme or builtin name, an empty corpus, a bad `validation_fraction`, an unknown
            TFDS dataset or split, or a missing TFDS text feature.
        FileNotFoundError: if a `text:` glob matches no file, or a TFDS dataset is neither prepared nor
            downloadable.

    Example:
    >>> corpus = read_source("builtin:pydoc")
    >>> len(corpus.train) > len(corpus.validation) > 0
    True
    """
    if not isinstance(validation_fraction, (int, float)) or not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in (0, 1). Received: validation_fraction={validation_fraction!r}"
        )
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            f"Unknown data source {source!r}; use builtin:pydoc, text:<file or glob> or tfds:<dataset name>."
        )
    if scheme == "tfds":
        train, validation = _read_tfds(
            source, rest, validation_fraction, tfds_data_dir, tfds_manual_dir, tfds_train_split,
            tfds_validation_split, tfds_text_key,
        )
    else:
        text = _read_builtin(source, rest) if scheme == "builtin" else _read_text_files(source, rest)
        train, validation = _split(source, text, validation_fraction)
    return Corpus(train=train, validation=validation, name=source)


def _split(source: str, text: str, validation_fraction: float) -> tuple[str, str]:
    if not text:
        raise ValueError(f"The data source {source!r} is empty; point it at text that holds something.")
    cut = int(len(text) * (1.0 - validation_fraction))
    return text[:cut], text[cut:]


def _read_builtin(source: str, name: str) -> str:
    if name != "pydoc":
        raise ValueError(f"Unknown builtin corpus in {source!r}; the builtin corpora are {list(BUILTIN_CORPORA)}.")
    from pydoc_data.topics import topics

    # Sorted keys, so the text (and every id derived from it) does not depend on dict order.
    return "".join(topics[key] for key in sorted(topics))


def _read_text_files(source: str, pattern: str) -> str:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(
            f"No files match {source!r}; check the path, or quote the glob so the shell leaves it alone."
        )
    texts = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path} (from {source!r}) is not UTF-8 text ({error.reason}); convert it to UTF-8."
            ) from None
    return "".join(texts)


def _split_names(split: str) -> list[str]:
    """"train[:90%]+test" -> ["train", "test"]: the names TFDS's split syntax refers to."""
    return [re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")]


@contextlib.contextmanager
def _few_download_retries(retries: int = 2):
    """Offline, TFDS's default 10 retries with exponential back-off take ~3.5 minutes before the error appears.

    TFDS exposes the count only as a module constant, so it is lowered for the one call that may download.
    """
    from tensorflow_datasets.core.download import downloader

    default, downloader.MAX_RETRIES = downloader.MAX_RETRIES, retries
    try:
        yield
    finally:
        downloader.MAX_RETRIES = default


def _read_tfds(source, name, validation_fraction, data_dir, manual_dir, train_split, validation_split, text_key):
    # TFDS is imported here: it is slow to import and only this scheme needs it.
    import tensorflow_datasets as tfds

    hint = (
        "pass tfds_data_dir=<a directory where it is already prepared>, or tfds_manual_dir=<a directory holding its "
        "downloaded files> to prepare it offline"
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown TFDS dataset in {source!r}; check the name against `tfds.list_builders()`."
        ) from None
    features = builder.info.features
    if text_key not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has no feature {text_key!r}; pass tfds_text_key= one of {sorted(features.keys())}."
        )
    try:
        with _few_download_retries():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as error:  # TFDS surfaces network, checksum and manual-dir failures as many unrelated types.
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in '{builder.data_dir_root}' and could not be downloaded or built "
            f"({type(error).__name__}); {hint}."
        ) from None

    known = set(builder.info.splits.keys())  # empty when TFDS does not know the splits (e.g. mocked data)
    for split in _split_names(train_split):
        if known and split not in known:
            raise ValueError(
                f"TFDS dataset {name!r} has no split {split!r}; pass tfds_train_split= one of {sorted(known)}."
            )
    has_validation = not known or all(split in known for split in _split_names(validation_split))

    def read(split: str) -> str:
        texts = []
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            value = example[text_key]
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        return DOCUMENT_SEPARATOR.join(texts)

    train = read(train_split)
    if not has_validation:
        return _split(source, train, validation_fraction)
    if not train:
        raise ValueError(f"The {train_split!r} split of {source!r} is empty; choose a split that holds text.")
    return train, read(validation_split)
