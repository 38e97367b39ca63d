"""Token stores: the token ids of one corpus for one tokenizer, on disk in shards, written once and then only read.

A store is a directory (any `tf.io.gfile` path: local, `gs://`, `ram://`):

    manifest.json           written last: format version, tokenizer fingerprint, dtype, end-of-document id,
                            the source and options it was prepared from, and each split's shards, token counts
                            and CRC-32 checksums
    tokenizer/              the tokenizer the ids come from (`load_tokenizer` reads it)
    train-00000.bin ...     raw little-endian ids, uint16 when the vocabulary fits, else uint32
    validation-00000.bin ...

`prepare_store` streams a source into a store: the tokenizer is built in one streaming pass (char: the characters
seen; BPE: trained on a bounded sample of the training text), then each split is encoded chunk by chunk (a batch
of chunks at a time, in parallel for BPE) and every document is followed by the tokenizer's end-of-text id, so
windows cross documents as in GPT-2's training and a model learns where a document ends. A given tokenizer without
one (`eos_id` None: a `CharTokenizer` saved with `end_of_text=False`, a GPT-2 style vocabulary lacking
`<|endoftext|>`) concatenates the documents with no boundary; the manifest's end-of-document id is then null.
Memory is bounded by one shard, whatever the corpus size.

A killed preparation leaves no manifest, so nothing takes it for a store. Shards are written under temporary
names and renamed, each followed by a progress note (in `.preparing/`) saying where in the source the next shard
starts; rerunning with the same arguments keeps the finished shards and continues from there, and because a chunk
depends only on where it starts, the finished store is byte-identical to one prepared without interruption.

`TokenStore` opens a finished store and reads windows of ids by position, without holding the ids: `os.pread` on
local files (unlike a memory map, the pages read never count towards the process's memory), `tf.io.gfile` reads
elsewhere. Opening checks each shard's size; a read checks that its ids are in the vocabulary, and the first read
from a shard reads it whole and compares its checksum with the manifest's, which catches the damage sizes and ids
cannot (a shard overwritten with zeros): no id of a shard is returned before its checksum has been checked, at the
cost of one extra read of each shard a `TokenStore` touches. `TokenStore.verify` checks whole splits up front:
training its validation split before it writes anything, and a rerun of prepare_data the whole store.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import sys
import threading
import time
import zlib

import numpy as np

from tf_lm.data.sources import DEFAULT_CHUNK_BYTES, SPLITS, Source, open_source
from tf_lm.data.tokenizers import DEFAULT_BPE_VOCAB_SIZE, TOKENIZER_KINDS, BPETokenizer, build_tokenizer, load_tokenizer
from tf_lm.fileio import (
    LOCK_FILE,
    atomic_write,
    check_replaceable,
    directory_lock,
    files_within,
    gfile,
    is_local,
    json_kind,
    read_json,
    read_json_object,
    read_text,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
# Present only while a store is being written: the preparation's arguments and one note per finished shard.
PREPARING = ".preparing"
DEFAULT_SHARD_TOKENS = 1 << 24  # 32 MB of uint16 per shard: the most ids a preparation holds at once
DEFAULT_BPE_SAMPLE_BYTES = 20_000_000
# Chunks encoded per call: enough for HF tokenizers to keep every core busy, few enough to bound memory.
ENCODE_BATCH_CHUNKS = 8
# Shard files a store on a TensorFlow filesystem keeps open: random windows soon touch every shard of a split.
OPEN_REMOTE_SHARDS = 16


def _write_json(path: str, value: dict) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


class _Progress:
    """One stderr line, redrawn at most twice a second: MB read, tokens written and tokens/s."""

    def __init__(self, label: str, total_bytes: int | None, enabled: bool):
        self.label, self.total, self.enabled = label, total_bytes, enabled
        self.bytes = self.tokens = 0
        self.start = self.shown = time.perf_counter()

    def update(self, num_bytes: int, num_tokens: int) -> None:
        self.bytes += num_bytes
        self.tokens += num_tokens
        if self.enabled and time.perf_counter() - self.shown >= 0.5:
            self._show("\r")

    def close(self) -> None:
        if self.enabled:
            self._show("\r")
            sys.stderr.write("\n")

    def _show(self, prefix: str) -> None:
        self.shown = time.perf_counter()
        seconds = max(self.shown - self.start, 1e-9)
        total = "" if self.total is None else f" / {self.total / 1e6:,.1f}"
        sys.stderr.write(f"{prefix}{self.label}: {self.bytes / 1e6:,.1f}{total} MB, {self.tokens:,} tokens, "
                         f"{self.tokens / seconds:,.0f} tokens/s, {self.bytes / 1e6 / seconds:,.1f} MB/s ")
        sys.stderr.flush()


def prepare_store(source: str | Source, directory: str, *, tokenizer="char", bpe_vocab_size: int | None = None,
                  bpe_sample_bytes: int = DEFAULT_BPE_SAMPLE_BYTES, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = False, **source_options) -> TokenStore:
    """Writes the token store of `source` into `directory` (or finishes an interrupted one) and opens it.

    Args:
        source: str or `Source`. A source string for `open_source` ("builtin:pydoc", "text:<glob>",
            "tfds:<name>"), or a source it opened.
        directory: str. The store's directory (any `tf.io.gfile` path); must be new, empty, a store prepared with
            the same arguments from the same version of the source (returned as it is), or an unfinished one
            (finished; restarted if it has no finished shard and other arguments). One process prepares a local
            directory at a time.
        tokenizer: "char", "bpe", or a tokenizer object (e.g. `load_tokenizer(model_dir + "/tokenizer")`) whose ids
            the store must hold, such as a pretrained model's. One without an end-of-text id (`eos_id` None)
            separates no documents.
        bpe_vocab_size: int or None. BPE's target vocabulary (None: 4096); only with tokenizer="bpe".
        bpe_sample_bytes: int, default 20 MB. BPE is trained on the first this many bytes of the train split.
        shard_tokens: int, default 2**24. A shard is closed once it holds at least this many ids.
        chunk_bytes: int, default 256 KB. Text read (and encoded) at a time; HF tokenizers' memory grows with it.
        progress: bool. A progress line on stderr: MB, tokens and tokens/s.
        **source_options: passed to `open_source` (`validation_fraction`, `tfds_data_dir`, ...) with a source string.

    Returns:
        The `TokenStore`.

    Raises:
        ValueError: for bad arguments, a `directory` holding something else (or a store of other arguments or of
            another version of the source), a `directory` another process is preparing, and whatever
            `open_source` or the tokenizer raise (an empty source, a character outside a given char
            tokenizer's vocabulary).
        FileNotFoundError: from `open_source`.

    Example:
    >>> store = prepare_store("builtin:pydoc", "runs/stores/pydoc-char")  # doctest: +SKIP
    >>> store.num_tokens("train")  # doctest: +SKIP
    """
    # Every argument is checked before anything is written: a refusal must not leave a preparation behind.
    for name, value, minimum in (("shard_tokens", shard_tokens, 1), ("bpe_sample_bytes", bpe_sample_bytes, 1),
                                 ("chunk_bytes", chunk_bytes, 4)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(
                f"prepare_store needs `{name}` to be an integer >= {minimum}. Received: `{name}={value!r}`"
            )
    if isinstance(tokenizer, str):
        if tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"Unknown tokenizer kind {tokenizer!r}; choose one of {list(TOKENIZER_KINDS)}.")
        if tokenizer == "char" and bpe_vocab_size is not None:
            raise ValueError(
                f"`bpe_vocab_size` only applies to `tokenizer='bpe'`. Received: `bpe_vocab_size={bpe_vocab_size}`"
            )
        wanted = {"kind": tokenizer}
        if tokenizer == "bpe":
            bpe_vocab_size = DEFAULT_BPE_VOCAB_SIZE if bpe_vocab_size is None else bpe_vocab_size
            BPETokenizer.check_vocab_size(bpe_vocab_size, "bpe_vocab_size")
            wanted.update(vocab_size=bpe_vocab_size, sample_bytes=bpe_sample_bytes)
    else:
        wanted = {"fingerprint": tokenizer.fingerprint}
    if isinstance(source, Source):
        if source_options:
            raise ValueError(f"Options of open_source go to open_source, not with an opened Source: {source_options}")
        opened = source
    else:
        opened = open_source(source, **source_options)
    inside = files_within(opened.files, directory)
    if inside:  # its own shards and notes would become its text, and an edit of the source on every resume
        raise ValueError(
            f"The source {opened.name!r} reads {len(inside)} file(s) inside the store directory {directory!r} (such "
            f"as {inside[0]!r}); narrow the glob, or prepare the store outside it."
        )
    request = {"source": opened.name, "source_digest": opened.digest, "source_options": opened.options,
               "tokenizer": wanted, "shard_tokens": shard_tokens, "chunk_bytes": chunk_bytes,
               "format_version": FORMAT_VERSION}
    files, manifest = gfile(directory), os.path.join(directory, MANIFEST)
    if not files.exists(manifest):
        check_replaceable(directory, PREPARING)
        notes, existed = os.path.join(directory, PREPARING), files.exists(directory)
        empty = not existed or not files.listdir(directory)
        prepared = False
        try:
            with directory_lock(notes):
                prepared = not files.exists(manifest)  # another process may have finished it before the lock
                if prepared:
                    _prepare(opened, directory, request, tokenizer, bpe_sample_bytes, progress)
        except Exception:
            # Bad input (text that is not UTF-8, a full disk): a directory that was new or empty is left as it was,
            # not half prepared, so a rerun with another source or tokenizer is not taken for a resume. An
            # interrupted run (KeyboardInterrupt, a kill) keeps its finished shards for a rerun. A call refused the
            # lock leaves the directory to the process preparing it, which created it a moment ago.
            if prepared and empty and files.exists(directory):
                files.rmtree(directory)
                if existed:
                    files.makedirs(directory)
            raise
        if prepared:
            files.rmtree(notes)
    store = TokenStore(directory)
    if store.manifest["request"] != request:
        raise ValueError(
            f"{directory} holds a token store prepared with other arguments or from another version of the source "
            f"({_differences(store.manifest['request'], request)}); choose another directory, or pass the "
            "arguments it was prepared with."
        )
    return store


def _differences(saved: dict, wanted: dict) -> str:
    names = sorted(name for name in saved.keys() | wanted.keys() if saved.get(name) != wanted.get(name))
    return "; ".join(f"{name}: {saved.get(name)!r} there, {wanted.get(name)!r} here" for name in names)


def _prepare(opened: Source, directory: str, request: dict, tokenizer, bpe_sample_bytes: int, progress: bool):
    """Writes the store's shards and manifest, continuing an unfinished preparation of the same request."""
    files, notes = gfile(directory), os.path.join(directory, PREPARING)
    request_path = os.path.join(notes, "request.json")
    if files.exists(request_path) and (saved := read_json_object(request_path)) != request:
        if any(name.endswith(".done") or name.startswith(SPLITS) for name in files.listdir(notes)):
            # The same source string with another digest: its text changed, so no rerun reads the text that the
            # finished shards hold.
            if saved.get("source") == request["source"] and saved.get("source_digest") != request["source_digest"]:
                fix = "its finished shards hold the text from before, so it cannot be finished: delete the directory"
            else:
                fix = "rerun with those arguments to finish it"
            raise ValueError(
                f"{directory} holds an unfinished token store prepared with other arguments or from another version "
                f"of the source ({_differences(saved, request)}); {fix}, or choose another directory."
            )
        # Nothing of it is finished (say, it stopped at an argument the tokenizer refused): start again.
        for name in files.listdir(notes):
            if name != LOCK_FILE:
                files.remove(os.path.join(notes, name))
        if files.exists(os.path.join(directory, TOKENIZER_DIR)):
            files.rmtree(os.path.join(directory, TOKENIZER_DIR))
    if files.exists(request_path):
        # A killed atomic_write leaves its hidden temporary sibling behind; the shard it was writing is redone.
        for name in files.listdir(directory):
            if name.startswith(".") and name.rstrip("/") != PREPARING:
                files.remove(os.path.join(directory, name))
    else:
        _write_json(request_path, request)

    chunk_bytes = request["chunk_bytes"]
    tokenizer_note = os.path.join(notes, "tokenizer.json")
    tokenizer_dir = os.path.join(directory, TOKENIZER_DIR)
    if files.exists(tokenizer_note):  # resuming: never train BPE (or scan the characters) twice
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        if isinstance(tokenizer, str):
            texts = (chunk.text for split in SPLITS for chunk in opened.chunks(split, chunk_bytes=chunk_bytes))
            if tokenizer == "bpe":
                texts = _sample(opened, bpe_sample_bytes, chunk_bytes)
            tokenizer = build_tokenizer(tokenizer, texts, request["tokenizer"].get("vocab_size"))
        tokenizer.save(tokenizer_dir)
        _write_json(tokenizer_note, {"fingerprint": tokenizer.fingerprint})
    dtype = np.dtype("<u2") if tokenizer.vocab_size <= 1 << 16 else np.dtype("<u4")

    splits = {}
    for split in SPLITS:
        report = _Progress(f"{split} ({directory})", opened.split_bytes(split), progress)
        shards = _write_split(opened, split, tokenizer, directory, dtype, request["shard_tokens"], chunk_bytes, report)
        report.close()
        splits[split] = {"tokens": sum(shard["tokens"] for shard in shards), "shards": shards}
    manifest = {"format_version": FORMAT_VERSION, "request": request, "dtype": dtype.name,
                "tokenizer": {"fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                              "directory": TOKENIZER_DIR},
                "end_of_document_id": tokenizer.eos_id, "splits": splits}
    _write_json(os.path.join(directory, MANIFEST), manifest)


def _sample(opened, sample_bytes: int, chunk_bytes: int):
    taken = 0
    for chunk in opened.chunks("train", chunk_bytes=chunk_bytes):
        if taken >= sample_bytes:
            return
        yield chunk.text
        taken += chunk.size


def _write_split(opened, split, tokenizer, directory, dtype, shard_tokens, chunk_bytes, report) -> list[dict]:
    notes, files = os.path.join(directory, PREPARING), gfile(directory)
    shards, start = [], None
    # Shards finished by an earlier, killed run: keep them and continue where the last one ended.
    while files.exists(note := os.path.join(notes, f"{split}-{len(shards):05d}.json")):
        finished = read_json_object(note)
        try:
            shard = {"file": str(finished["file"]), "tokens": int(finished["tokens"])}
            if "crc32" in finished:  # notes written before checksums have none
                shard["crc32"] = _checksum(finished["crc32"])
            shards.append(shard)
            start = tuple(finished["end"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{note} is damaged: it is not a finished shard's note; delete the directory and "
                             "prepare it again.") from None
        # Written by an earlier, killed run: it may have been damaged since (reading it back costs far less than
        # encoding it did).
        _check_shard(directory, shard["file"], shard["tokens"], dtype, "its notes say")
        if "crc32" in shard:
            _check_checksum(directory, shard["file"], shard["crc32"], "its notes record")
    done = os.path.join(notes, f"{split}.done")
    if files.exists(done):
        # It records how many shards the split has (empty from versions before it did): a note lost since would
        # otherwise end the split early, silently dropping every shard after it.
        recorded = read_text(done).strip()
        if recorded and recorded != str(len(shards)):
            raise ValueError(f"{directory} holds an unfinished token store whose {split} split has {recorded} shards "
                             f"but notes for only {len(shards)} ({PREPARING} is damaged); delete the directory and "
                             "prepare it again.")
        return shards

    pending, pending_tokens = [], 0

    def close_shard(end):
        nonlocal pending, pending_tokens
        name = f"{split}-{len(shards):05d}.bin"
        data = b"".join(ids.tobytes() for ids in pending)
        atomic_write(os.path.join(directory, name), data)
        shard = {"file": name, "tokens": pending_tokens, "crc32": zlib.crc32(data)}
        _write_json(os.path.join(notes, f"{split}-{len(shards):05d}.json"), {**shard, "end": list(end)})
        shards.append(shard)
        pending, pending_tokens = [], 0

    chunks = opened.chunks(split, start, chunk_bytes)
    end = start
    while batch := list(itertools.islice(chunks, ENCODE_BATCH_CHUNKS)):
        for chunk, ids in zip(batch, tokenizer.encode_batch([chunk.text for chunk in batch])):
            if chunk.ends_document and tokenizer.eos_id is not None:
                ids = np.append(ids, np.int32(tokenizer.eos_id))
            pending.append(ids.astype(dtype))
            pending_tokens += len(ids)
            report.update(chunk.size, len(ids))
            end = chunk.end
            if pending_tokens >= shard_tokens:
                close_shard(end)
    if pending_tokens:
        close_shard(end)
    atomic_write(done, str(len(shards)))
    return shards


class DamagedStoreError(ValueError):
    """A store's files contradict its manifest: a shard missing, of another size, of another checksum, or holding an
    id outside the tokenizer's vocabulary (which a model would embed as garbage, and train or evaluate to NaN,
    without an error)."""


def _check_shard(directory: str, name: str, tokens: int, dtype: np.dtype, source: str) -> None:
    """Raises DamagedStoreError if the shard file `name` is missing or does not hold `tokens` ids (`source`: who
    says so)."""
    path, expected = os.path.join(directory, name), tokens * dtype.itemsize
    files = gfile(path)
    size = files.stat(path).length if files.exists(path) else None
    if size != expected:
        found = "is missing" if size is None else f"holds {size:,} bytes"
        raise DamagedStoreError(f"Token store {directory!r} is damaged: {name} {found}, {source} {expected:,} "
                                f"({tokens:,} ids); prepare the store again into a new directory.")


# Bytes a checksum reads at a time: the memory a verification holds, whatever the shard's size.
CHECKSUM_READ_BYTES = 1 << 22


def _checksum(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise ValueError(f"a shard's crc32 is {value!r}, not an unsigned 32-bit integer")
    return value


def _check_checksum(directory: str, name: str, crc32: int, source: str) -> None:
    """Raises DamagedStoreError if the shard file `name` (of the right size) does not have checksum `crc32`."""
    path, found = os.path.join(directory, name), 0
    with gfile(path).GFile(path, "rb") as shard:
        while block := shard.read(CHECKSUM_READ_BYTES):
            found = zlib.crc32(block, found)
    if found != crc32:
        raise DamagedStoreError(f"Token store {directory!r} is damaged: {name} does not hold the ids {source} (its "
                                f"CRC-32 is {found:08x}, not {crc32:08x}); prepare the store again into a new "
                                "directory.")


def _shard(directory: str, shard: dict) -> tuple[str, int, int | None]:
    """A manifest's shard entry as `(path, ids, crc32)` (crc32 None in a store written before checksums);
    TypeError or ValueError for one of another shape."""
    tokens = shard["tokens"]
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"a shard's token count is {tokens!r}, not an integer >= 0")
    crc32 = _checksum(shard["crc32"]) if "crc32" in shard else None
    return os.path.join(directory, shard["file"]), tokens, crc32


class TokenStore:
    """A finished token store, opened for reading windows of ids.

    Args:
        directory: str. A directory written by `prepare_store` (any `tf.io.gfile` path).

    Raises:
        FileNotFoundError: if `directory` has no manifest (no store, or an unfinished one).
        ValueError: if the manifest is unreadable or of another shape or format; `DamagedStoreError` (a ValueError)
            if a shard is missing or its size disagrees with the manifest (a truncated or damaged store).

    Example:
    >>> store = TokenStore("runs/stores/pydoc-char")  # doctest: +SKIP
    >>> store.tokenizer.decode(store.read("train", 0, 100))  # doctest: +SKIP
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._files = gfile(directory)
        path = os.path.join(directory, MANIFEST)
        if not self._files.exists(path):
            if self._files.exists(os.path.join(directory, PREPARING)):
                hint = "its preparation did not finish; rerun the same prepare_data command to finish it"
            else:
                hint = "prepare one with `prepare_store` (or `python -m experiments.prepare_data`)"
            raise FileNotFoundError(f"No {MANIFEST} in token store {directory!r}: {hint}.")
        try:
            self.manifest = read_json(path)
            version = self.manifest.get("format_version")
            self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
            splits = {split: [_shard(directory, shard) for shard in self.manifest["splits"][split]["shards"]]
                      for split in SPLITS}
            self.eos_id: int | None = self.manifest["end_of_document_id"]
            self.fingerprint: str = self.manifest["tokenizer"]["fingerprint"]
            self.vocab_size: int = self.manifest["tokenizer"]["vocab_size"]
            if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 1:
                raise ValueError(f"its vocabulary size is {self.vocab_size!r}, not an integer >= 1")
            if not isinstance(self.manifest["request"], dict):
                raise TypeError(f"its request is {json_kind(self.manifest['request'])}, not an object")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not a token store manifest ({error}); prepare the store again.") from None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"Token store {directory!r} has format version {version!r}; this code reads {FORMAT_VERSION}. "
                "Prepare the store again."
            )
        self._shards: dict[str, list[tuple[str, int, int | None]]] = {}
        self._bounds: dict[str, np.ndarray] = {}
        for split, shards in splits.items():
            for shard_path, tokens, _ in shards:
                _check_shard(directory, os.path.basename(shard_path), tokens, self.dtype, "its manifest says")
            self._shards[split] = shards
            self._bounds[split] = np.cumsum([0] + [tokens for _, tokens, _ in shards], dtype=np.int64)  # [shards + 1]
        self._local = is_local(directory)
        self._remote_handles: collections.OrderedDict[str, object] = collections.OrderedDict()  # least recent first
        self._lock = threading.Lock()
        # Shards whose checksum this object has compared (path -> None when it matched, else its DamagedStoreError),
        # and one lock per shard being compared: parallel reads of one shard wait for one comparison.
        self._checked: dict[str, DamagedStoreError | None] = {}
        self._checking: dict[str, threading.Lock] = {}
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The store's tokenizer (loaded once).

        Raises:
            ValueError: if the saved tokenizer is not the one the ids were encoded with.
        """
        if self._tokenizer is None:
            tokenizer = load_tokenizer(os.path.join(self.directory, TOKENIZER_DIR))
            if tokenizer.fingerprint != self.fingerprint:
                raise ValueError(
                    f"The tokenizer in token store {self.directory!r} is not the one its ids were encoded with; "
                    "prepare the store again."
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def num_tokens(self, split: str) -> int:
        """How many ids `split` holds."""
        return int(self._bounds[self._split(split)][-1])

    def verify(self, split: str | None = None) -> int:
        """Reads the shards of `split` (None: every split) whole and compares their checksums with the manifest's.

        This reads the split once (a store's manifest records a checksum per shard; one written before that
        records none, and has nothing to verify).

        Returns:
            How many shards were verified.

        Raises:
            DamagedStoreError: for the first shard whose checksum differs, naming it.
            ValueError: for an unknown split.
        """
        verified = 0
        for name in SPLITS if split is None else [self._split(split)]:
            for path, _, crc32 in self._shards[name]:
                if crc32 is not None:
                    self._compare_checksum(path, crc32)
                    verified += 1
        return verified

    def _compare_checksum(self, path: str, crc32: int) -> None:
        """Reads the shard at `path` whole and records (and raises) whether its checksum is `crc32`."""
        try:
            _check_checksum(self.directory, os.path.basename(path), crc32, "its manifest records")
        except DamagedStoreError as error:
            self._checked[path] = error
            raise
        self._checked[path] = None

    def _check_once(self, path: str, crc32: int | None) -> None:
        """Compares the shard's checksum unless this object already has; raises its DamagedStoreError if it
        differs (again at every read)."""
        if crc32 is None or (path in self._checked and self._checked[path] is None):
            return
        with self._lock:
            lock = self._checking.setdefault(path, threading.Lock())
        with lock:
            if path not in self._checked:
                self._compare_checksum(path, crc32)
        if (error := self._checked[path]) is not None:
            raise DamagedStoreError(str(error))

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; choose one of {list(SPLITS)}.")
        return split

    def _read_shard(self, path: str, offset: int, count: int) -> bytes:
        itemsize = self.dtype.itemsize
        if self._local:
            # A descriptor per read: a store of thousands of shards never holds thousands open, and parallel
            # tf.data calls share nothing (pread has no file position). Opening costs microseconds per window.
            descriptor = os.open(path, os.O_RDONLY)
            try:
                return os.pread(descriptor, count * itemsize, offset * itemsize)
            finally:
                os.close(descriptor)
        with self._lock:  # a GFile has one position: seek and read as one step; opening one costs a round trip
            handle = self._remote_handles.pop(path, None) or self._files.GFile(path, "rb")
            self._remote_handles[path] = handle
            if len(self._remote_handles) > OPEN_REMOTE_SHARDS:
                self._remote_handles.popitem(last=False)[1].close()
            handle.seek(offset * itemsize)
            return handle.read(count * itemsize)

    def read(self, split: str, start: int, length: int) -> np.ndarray:
        """The ids `[start, start + length)` of `split` (across shard boundaries) as int32 `[length]`.

        The first read from a shard also reads it whole to compare its checksum (once per `TokenStore`).

        Raises:
            ValueError: if the range is outside the split.
            DamagedStoreError: if a shard read holds an id outside the tokenizer's vocabulary, or does not have the
                checksum its manifest records.
        """
        bounds = self._bounds[self._split(split)]
        if start < 0 or length < 0 or start + length > bounds[-1]:
            raise ValueError(
                f"Ids [{start}, {start + length}) are outside the {split} split of {self.directory!r} "
                f"(0..{int(bounds[-1])})."
            )
        pieces, position, end = [], start, start + length
        shard = int(np.searchsorted(bounds, start, side="right")) - 1
        while position < end:
            path, _, crc32 = self._shards[split][shard]
            count = min(end, int(bounds[shard + 1])) - position
            ids = np.frombuffer(self._read_shard(path, position - int(bounds[shard]), count), self.dtype)
            if count and ids.max() >= self.vocab_size:  # a max per read: microseconds, against a model step's ms
                offset = position - int(bounds[shard]) + int(np.argmax(ids >= self.vocab_size))
                raise DamagedStoreError(
                    f"Token store {self.directory!r} is damaged: {os.path.basename(path)} holds id "
                    f"{int(ids.max())} (at position {offset:,}), outside its tokenizer's {self.vocab_size:,} ids; "
                    "prepare the store again into a new directory."
                )
            self._check_once(path, crc32)  # after the ids: a damaged window names its id, more than a checksum can
            pieces.append(ids)
            position += count
            shard += 1
        return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros([0], np.int32)

    def windows(self, split: str, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 `[len(starts), length]`: row i is `read(split, starts[i], length)`."""
        return np.stack([self.read(split, int(start), length) for start in starts]).reshape(len(starts), length)

    def __del__(self):
        for handle in getattr(self, "_remote_handles", {}).values():
            handle.close()

    def __repr__(self) -> str:
        counts = ", ".join(f"{split}={self.num_tokens(split):,}" for split in SPLITS)
        return f"TokenStore({self.directory!r}, {counts} ids, {self.dtype.name})"
