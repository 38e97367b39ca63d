"""Corpus sources: a source string becomes train and validation documents, read as a stream of bounded chunks.

Schemes:
- `builtin:pydoc` (the default): the English text of CPython's `pydoc_data.topics`, one document per topic, on
  every machine, offline.
- `text:<glob>`: UTF-8 files (any `tf.io.gfile` path), one document per file, in sorted path order. A path that
  names an existing file is that file, even if its name holds glob characters (`notes[1].txt`).
- `tfds:<name>`: a TFDS dataset whose examples hold a text feature, one document per example, e.g.
  `tfds:tiny_shakespeare`.

A source with its own splits (TFDS: Tiny Shakespeare's train and validation splits hold one example each) uses
them. Otherwise the last `validation_fraction` of the documents that hold text is the validation split (at least
one, and at least one left to train on), so no document is in both splits. A source with a single document (one
text file, or a TFDS train split of one example when the dataset has no `tfds_validation_split`) is cut instead at
the last `validation_fraction` of its bytes, at a character boundary: the classic contiguous split. Either way the
cut is found from the documents' sizes, without reading the text.

No step holds a document, a split or the corpus: `Source.chunks` yields at most `chunk_bytes` of text at a time,
cut after the chunk's last newline where it has one (so BPE rarely sees a word cut in two). Every chunk carries the
position just after it, and reading from that position yields exactly the chunks that followed it, so a
preparation killed midway resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator

from tf_lm.fileio import gfile, is_local

SCHEMES = ("builtin", "text", "tfds")
_SOURCES = "builtin:pydoc, text:<file or glob> or tfds:<dataset name>"
# A --dataset naming a token store (`tf_lm.data.store`), which training and evaluation read instead of a source:
# never a source itself.
STORE_SCHEME = "store:"
BUILTIN_CORPORA = ("pydoc",)
DEFAULT_SOURCE = "builtin:pydoc"
SPLITS = ("train", "validation")
DEFAULT_CHUNK_BYTES = 1 << 18
_BYTE_ORDER_MARK = "\ufeff"

# (document index, byte offset in it): where a split starts or stops, or where reading resumes.
Position = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of one document.

    Args:
        text: str, the chunk's text.
        ends_document: bool, whether the document ends with this chunk.
        size: int, the chunk's UTF-8 bytes.
        end: `(document, offset)` just after the chunk; `Source.chunks(split, start=end)` continues from it.
    """

    text: str
    ends_document: bool
    size: int
    end: Position


@dataclasses.dataclass(frozen=True)
class _Documents:
    """The documents of a source (or of one TFDS split), in order.

    Args:
        names: `index -> str`, for error messages.
        open_from: `first -> iterator of (index, size in bytes, open)`, starting at document `first`; `open()`
            returns a seekable binary file.
    """

    names: Callable[[int], str]
    open_from: Callable[[int], Iterator[tuple[int, int, Callable[[], io.IOBase]]]]


@dataclasses.dataclass(frozen=True)
class _Range:
    documents: _Documents
    begin: Position = (0, 0)
    stop: Position | None = None  # None: to the last document's end
    size: int | None = None  # bytes, for progress reports; None when unknown without a pass (TFDS)


class Source:
    """A source opened for streaming. Made by `open_source`.

    Attributes:
        name: str, the source string.
        options: dict, the options that decide its splits (part of a token store's identity).
        digest: str, a sha256 of what the text is, found without reading it (each file's path, size and modification
            time; the builtin text itself; a TFDS dataset's name and version), so a token store prepared from an
            earlier version of the source is not taken for one of this version.
        files: tuple of str, the files a `text:` source reads (empty for the others), so a writer can refuse to
            write where its own input is.
    """

    def __init__(self, name: str, options: dict, splits: dict[str, _Range], contents, files: tuple[str, ...] = ()):
        self.name = name
        self.options = options
        self.files = files
        self.digest = hashlib.sha256(json.dumps(contents, sort_keys=True).encode("utf-8")).hexdigest()
        self._splits = splits

    def split_bytes(self, split: str) -> int | None:
        """The UTF-8 bytes of `split`, or None when the source cannot tell without reading it (TFDS)."""
        return self._splits[split].size

    def chunks(self, split: str, start: Position | None = None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
        """Yields `split` as chunks of at most `chunk_bytes` UTF-8 bytes, from `start` (a `Chunk.end`) if given.

        Raises:
            ValueError: for an unknown split, `chunk_bytes` < 4 (one character), or a document that is not UTF-8.
        """
        if split not in self._splits:
            raise ValueError(f"Unknown split {split!r}; choose one of {list(SPLITS)}.")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 4:
            raise ValueError(f"chunk_bytes must be an integer >= 4 (one UTF-8 character). Received: {chunk_bytes!r}")
        span = self._splits[split]
        begin = span.begin if start is None else start
        for index, size, open_document in span.documents.open_from(begin[0]):
            if span.stop is not None and index > span.stop[0]:
                return
            low = begin[1] if index == begin[0] else 0
            high = span.stop[1] if span.stop is not None and index == span.stop[0] else size
            if low >= high:
                continue
            with open_document() as f:
                position = low
                while position < high:
                    # Each chunk is read from its own start (no carried remainder), so a chunk depends only on
                    # where it starts: resuming from a Chunk.end yields the same chunks as the first reading.
                    f.seek(position)
                    block = f.read(min(chunk_bytes, high - position))
                    if not block:
                        raise ValueError(
                            f"{span.documents.names(index)} (from {self.name!r}) changed while it was read; "
                            "prepare the data again once it is written."
                        )
                    if position + len(block) < high:
                        block = block[:_chunk_end(block)]
                    try:
                        text = block.decode("utf-8")
                    except UnicodeDecodeError as error:
                        raise ValueError(
                            f"{span.documents.names(index)} (from {self.name!r}) is not UTF-8 text ({error.reason}); "
                            "convert it to UTF-8."
                        ) from None
                    if position == 0 and text.startswith(_BYTE_ORDER_MARK):  # an editor's, not the document's text
                        text = text[1:]
                    position += len(block)
                    ends = position == size
                    yield Chunk(text, ends, len(block), (index + 1, 0) if ends else (index, position))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={self.split_bytes(split)} bytes" for split in SPLITS)
        return f"Source(name={self.name!r}, {sizes})"


def _chunk_end(block: bytes) -> int:
    """Where to cut a block that continues: after its last newline, else at its last character boundary."""
    newline = block.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    lead = len(block) - 1
    while lead > 0 and block[lead] & 0xC0 == 0x80:  # continuation bytes 10xxxxxx
        lead -= 1
    first = block[lead]
    width = 1 if first < 0x80 else 2 if first >> 5 == 0b110 else 3 if first >> 4 == 0b1110 else 4
    return lead if lead + width > len(block) else len(block)


def open_source(source: str = DEFAULT_SOURCE, *, validation_fraction: float = 0.1, tfds_data_dir: str | None = None,
                tfds_manual_dir: str | None = None, tfds_train_split: str = "train",
                tfds_validation_split: str = "validation", tfds_text_key: str = "text") -> Source:
    """Opens `source` for streaming: finds its documents and decides its splits, reading no text.

    Args:
        source: str, default "builtin:pydoc". `builtin:pydoc`, `text:<glob>` or `tfds:<name>`.
        validation_fraction: float in (0, 1), default 0.1. Share of the documents held out (from the end) when the
            source has no validation split of its own; of the bytes when it has a single document.
        tfds_data_dir: str or None. TFDS `data_dir` (where prepared datasets live); None is TFDS's default
            (~/tensorflow_datasets).
        tfds_manual_dir: str or None. A directory holding the dataset's downloaded files, so TFDS can prepare it
            offline (e.g. the directory of Tiny Shakespeare's `input.txt`).
        tfds_train_split: str, default "train". TFDS split (slices such as "train[:90%]" work) for training.
        tfds_validation_split: str, default "validation". TFDS split for validation; if the dataset lists no split
            of that name, the last `validation_fraction` of the train split's examples is used instead (found by one
            pass counting their bytes).
        tfds_text_key: str, default "text". The feature of each example that holds its text.

    Returns:
        A `Source` named `source`.

    Raises:
        ValueError: on an unknown scheme or builtin name, a token store (`store:<dir>`), an empty corpus, a bad
            `validation_fraction`, an unknown TFDS dataset or split, or a missing TFDS text feature.
        FileNotFoundError: if a `text:` glob matches no file (or names a directory), or a TFDS dataset is neither
            prepared nor downloadable.

    Example:
    >>> source = open_source("builtin:pydoc")
    >>> first = next(source.chunks("train", chunk_bytes=4096))
    >>> len(first.text.encode("utf-8")) <= 4096
    True
    """
    if not isinstance(validation_fraction, (int, float)) or not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in (0, 1). Received: `validation_fraction={validation_fraction!r}`"
        )
    scheme, sep, rest = source.partition(":")
    if source.startswith(STORE_SCHEME):
        raise ValueError(
            f"{source!r} names a token store, which is prepared already: train or evaluate on it as it is; prepare "
            f"from a source: {_SOURCES}."
        )
    if not sep or scheme not in SCHEMES:
        # A `dataset` that training or evaluation reads may also name a prepared store (`TrainConfig.dataset`).
        raise ValueError(
            f"Unknown data source {source!r}; use {_SOURCES} (or, to train or evaluate on a token store that is "
            f"prepared already, {STORE_SCHEME}<dir>)."
        )
    if scheme == "tfds":
        options = {"validation_fraction": validation_fraction, "tfds_train_split": tfds_train_split,
                   "tfds_validation_split": tfds_validation_split, "tfds_text_key": tfds_text_key}
        splits, version = _tfds_splits(source, rest, validation_fraction, tfds_data_dir, tfds_manual_dir,
                                       tfds_train_split, tfds_validation_split, tfds_text_key)
        return Source(source, options, splits, version)
    if scheme == "builtin":
        documents, sizes, contents = _builtin(source, rest)
        files = ()
    else:
        documents, sizes, contents = _text_files(source, rest)
        files = tuple(path for path, _, _ in contents)
    return Source(source, {"validation_fraction": validation_fraction},
                  _carve(source, documents, sizes, validation_fraction), contents, files)


def _carve(source: str, documents: _Documents, sizes: list[int], validation_fraction: float) -> dict[str, _Range]:
    """Holds out the last `validation_fraction` of the documents that hold text (the bytes of a single one)."""
    filled = [index for index, size in enumerate(sizes) if size]
    if not filled:
        raise ValueError(f"The data source {source!r} is empty; point it at text that holds something.")
    if len(filled) == 1:
        begin = _byte_cut(documents, sizes, filled[0], validation_fraction)
        if begin[1] in (0, sizes[filled[0]]):
            raise ValueError(
                f"`validation_fraction={validation_fraction}` leaves the {'train' if begin[1] == 0 else 'validation'} "
                f"split of {source!r} empty: it is one document of {sizes[filled[0]]:,} bytes, split by bytes; use a "
                "fraction that leaves text on both sides."
            )
    else:
        held_out = min(len(filled) - 1, max(1, int(len(filled) * validation_fraction + 0.5)))
        begin = (filled[-held_out], 0)
    train_bytes = sum(sizes[:begin[0]]) + begin[1]
    return {"train": _Range(documents, (0, 0), begin, train_bytes),
            "validation": _Range(documents, begin, None, sum(sizes) - train_bytes)}


def _byte_cut(documents: _Documents, sizes: list[int], index: int, validation_fraction: float) -> Position:
    """Where the last `validation_fraction` of document `index`'s bytes begins, moved to a character boundary."""
    cut = int(sizes[index] * (1.0 - validation_fraction))
    if cut:
        _, _, open_document = next(documents.open_from(index))
        with open_document() as f:
            f.seek(cut)
            following = f.read(3)
        cut += len(following) - len(following.lstrip(bytes(range(0x80, 0xC0))))  # skip continuation bytes
    return index, cut


def _in_memory(texts: list[bytes], names: Callable[[int], str]) -> _Documents:
    def open_from(first):
        for index in range(first, len(texts)):
            yield index, len(texts[index]), lambda text=texts[index]: io.BytesIO(text)

    return _Documents(names, open_from)


def _builtin(source: str, name: str) -> tuple[_Documents, list[int], str]:
    if name != "pydoc":
        raise ValueError(f"Unknown builtin corpus in {source!r}; the builtin corpora are {list(BUILTIN_CORPORA)}.")
    from pydoc_data.topics import topics

    # Sorted keys, so the text (and every id derived from it) does not depend on dict order. The topics are a few
    # hundred kilobytes that Python already holds.
    keys = sorted(topics)
    texts = [topics[key].encode("utf-8") for key in keys]
    contents = hashlib.sha256(b"\0".join(texts)).hexdigest()  # the topics change between Python releases
    return _in_memory(texts, lambda index: f"pydoc topic {keys[index]!r}"), [len(text) for text in texts], contents


def _text_files(source: str, pattern: str) -> tuple[_Documents, list[int], list]:
    files = gfile(pattern)
    path = os.path.expanduser(pattern) if is_local(pattern) else pattern
    if files.exists(path) and not files.isdir(path):
        # A file is read as named: as a glob, `notes[1].txt` would match `notes1.txt`, or nothing.
        paths = [path]
    elif is_local(pattern):
        paths = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    else:
        paths = sorted(p for p in files.glob(path) if not files.isdir(p))
    if not paths:
        directory = pattern.rstrip("/")
        if directory and gfile(directory).isdir(os.path.expanduser(directory)):
            raise FileNotFoundError(
                f"{source!r} is a directory; name its files with a glob, e.g. text:'{directory}/*.txt' (quoted, "
                "so the shell leaves the glob alone)."
            )
        raise FileNotFoundError(
            f"No files match {source!r}; check the path, or quote the glob so the shell leaves it alone."
        )
    stats = [gfile(path).stat(path) for path in paths]
    sizes = [stat.length for stat in stats]

    def open_from(first):
        for index in range(first, len(paths)):
            yield index, sizes[index], lambda path=paths[index]: gfile(path).GFile(path, "rb")

    contents = [[path, stat.length, stat.mtime_nsec] for path, stat in zip(paths, stats)]
    return _Documents(lambda index: paths[index], open_from), sizes, contents


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


TFDS_HINT = (
    "pass `tfds_data_dir=<a directory where it is already prepared>`, or `tfds_manual_dir=<a directory holding its "
    "downloaded files>` to prepare it offline"
)


def tfds_builder(source: str, name: str, data_dir: str | None):
    """The TFDS builder of `name` (nothing downloaded yet); ValueError for an unknown name."""
    if not name.strip():  # TFDS would answer with a page on its name syntax
        raise ValueError(f"{source!r} names no TFDS dataset; use tfds:<name>, e.g. tfds:tiny_shakespeare.")
    # TFDS is imported here: it is slow to import and only this scheme needs it.
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown TFDS dataset in {source!r}; check the name against `tfds.list_builders()`."
        ) from None


def _paths_under(directories: list[str]) -> set[str]:
    return {os.path.join(root, name) for directory in directories for root, dirs, files in os.walk(directory)
            for name in dirs + files} | {d for d in directories if os.path.exists(d)}


def prepare_tfds(builder, name: str, manual_dir: str | None = None, hint: str = TFDS_HINT) -> None:
    """Prepares the data of `builder` (TFDS dataset `name`) unless it is already: a download, or a build from
    `manual_dir`, failing within seconds when that is impossible.

    Offline, the download fails after two quick retries instead of TFDS's ten with back-off (~3.5 minutes), and
    whatever the attempt created (empty dataset and download directories, temporary files) is removed again.
    The language-model data (`open_source`) and BERT fine-tuning (`tf_lm.bert.data.load_tfds`) both call this.

    Raises:
        FileNotFoundError: if the data is not prepared and cannot be downloaded or built; the message ends with
            `hint` (how to pass a prepared or manual directory).
    """
    import tensorflow_datasets as tfds

    root = str(builder.data_dir_root)
    watched = [os.path.join(root, "downloads"), os.path.join(root, name.split("/")[0])] if is_local(root) else []
    new_root = is_local(root) and not os.path.exists(root)  # e.g. ~/tensorflow_datasets on a first use
    before = _paths_under(watched)
    try:
        with _few_download_retries():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as error:  # TFDS surfaces network, checksum and manual-dir failures as many unrelated types.
        for path in sorted(_paths_under(watched) - before, key=len, reverse=True):  # deepest first
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
        if new_root:
            shutil.rmtree(root, ignore_errors=True)
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in '{root}' and could not be downloaded or built "
            f"({type(error).__name__}); {hint}."
        ) from None


def _tfds_splits(source, name, validation_fraction, data_dir, manual_dir, train_split, validation_split,
                 text_key) -> tuple[dict[str, _Range], str]:
    """The splits, and the dataset's name and version: a version of a TFDS dataset never changes."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(source, name, data_dir)
    features = builder.info.features
    if text_key not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has no feature {text_key!r}; pass tfds_text_key= one of {sorted(features.keys())}."
        )
    prepare_tfds(builder, name, manual_dir)

    known = set(builder.info.splits.keys())  # empty when TFDS does not know the splits (e.g. mocked data)
    for split in _split_names(train_split):
        if known and split not in known:
            raise ValueError(
                f"TFDS dataset {name!r} has no split {split!r}; pass tfds_train_split= one of {sorted(known)}."
            )
    has_validation = not known or all(split in known for split in _split_names(validation_split))

    def examples(split: str) -> _Documents:
        def open_from(first):
            # Examples are small (a TFDS record each), so one is read whole; skip() makes resuming O(first) reads
            # of the record index, not of the text.
            dataset = builder.as_dataset(split=split, shuffle_files=False).skip(first)
            for index, example in enumerate(tfds.as_numpy(dataset), start=first):
                value = example[text_key]
                text = value if isinstance(value, bytes) else str(value).encode("utf-8")
                yield index, len(text), lambda text=text: io.BytesIO(text)

        return _Documents(lambda index: f"example {index} of TFDS split {split!r}", open_from)

    train, version = examples(train_split), builder.info.full_name
    if not has_validation:
        sizes = [size for _, size, _ in train.open_from(0)]  # one pass over the train split, counting bytes
        return _carve(source, train, sizes, validation_fraction), version
    if not any(size for _, size, _ in train.open_from(0)):
        raise ValueError(f"The {train_split!r} split of {source!r} is empty; choose a split that holds text.")
    return {"train": _Range(train), "validation": _Range(examples(validation_split))}, version
