"""Tokenizers: text <-> token ids behind one interface, saved beside every trained model.

Two kinds share `encode`, `decode`, `vocab_size`, `eos_id`, `pad_id`, `is_char_level`, `fingerprint`,
`save(directory)`, `load(directory)` and `to_hf()` (an HF `tokenizers.Tokenizer`):

- `CharTokenizer`: one id per character, the vocabulary being the sorted characters of a corpus (the classic
  char-level setup), plus optionally an end-of-text id after them. Encoding is a numpy table lookup over code
  points, so a megabyte takes milliseconds.
- `BPETokenizer`: byte-level BPE from HF `tokenizers`, trained to a target vocabulary size or loaded from a
  `tokenizer.json` or GPT-2 style `vocab.json` + `merges.txt`.

`load_tokenizer(directory)` picks the class from the files present (a `tokenizer.json` that `CharTokenizer.to_hf`
wrote, as in an HF export of a char model, reads back as that `CharTokenizer`); `build_tokenizer(kind, texts)` is
the one place a `--tokenizer` flag value becomes a tokenizer. Files are read and written through `tf.io.gfile`, so
a tokenizer lives wherever its model or token store does (local, `gs://`, `ram://`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from tf_lm.fileio import atomic_write, gfile, json_kind, not_a_directory, read_text

CHAR_FILE = "char_tokenizer.json"
BPE_FILE = "tokenizer.json"
GPT2_VOCAB_FILE = "vocab.json"
GPT2_MERGES_FILE = "merges.txt"
END_OF_TEXT = "<|endoftext|>"
TOKENIZER_KINDS = ("char", "bpe")
# Where a tf_lm model directory keeps its tokenizer (`tf_lm.artifacts`' SAVED_DIR/TOKENIZER_DIR, not imported here
# because artifacts loads Keras, which token stores never need).
MODEL_DIR_TOKENIZER = os.path.join("model", "tokenizer")
DEFAULT_BPE_VOCAB_SIZE = 4096

# UTF-32 gives one fixed-width code point per character; "surrogatepass" keeps lone surrogates (legal in a
# Python str) round-tripping instead of raising deep inside numpy.
_UTF32 = "utf-32-le"
_SURROGATES = "surrogatepass"


# Every code point, for the streaming vocabulary pass: a boolean table marks the characters seen so far.
_NUM_CODE_POINTS = 0x110000


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(_UTF32, _SURROGATES), dtype="<u4")  # [len(text)]


class CharTokenizer:
    """One id per character; ids follow the sorted order of the vocabulary's characters.

    Args:
        chars: sequence of single-character strings, the vocabulary. Sorted and de-duplicated here, so the ids
            do not depend on the order given.
        unknown_token: str or None, default None. One character that every character outside the vocabulary
            maps to (added to the vocabulary if missing). With None, such characters raise a ValueError.
        end_of_text: bool, default False. Adds an end-of-text id (`eos_id`, the last id, decoded as
            `<|endoftext|>`) that a token store puts after every document; a store encoded without one marks no
            document ends. `encode` never produces it.

    Raises:
        ValueError: if `chars` is empty or holds a string that is not exactly one character, or
            `unknown_token` is not one character.

    Example:
    >>> tok = CharTokenizer.from_text("hello world")
    >>> tok.encode("hello")
    [3, 2, 4, 4, 5]
    >>> tok.decode(tok.encode("hello"))
    'hello'
    """

    is_char_level = True
    pad_id = None

    def __init__(self, chars: Sequence[str], unknown_token: str | None = None, end_of_text: bool = False):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer needs single-character strings. Received: {bad[:5]!r}")
        if unknown_token is not None and (not isinstance(unknown_token, str) or len(unknown_token) != 1):
            raise ValueError(
                f"CharTokenizer.unknown_token must be one character (e.g. '\\ufffd') or None. "
                f"Received: unknown_token={unknown_token!r}"
            )
        vocab = set(chars) | ({unknown_token} if unknown_token is not None else set())
        if not vocab:
            raise ValueError("CharTokenizer needs at least one character; build it from a non-empty text.")
        self.chars: tuple[str, ...] = tuple(sorted(vocab))
        self.unknown_token = unknown_token
        self._id_to_code = _code_points("".join(self.chars))  # [vocab_size]
        # A dense code point -> id table (-1 = not in the vocabulary): one numpy gather encodes a whole text.
        self._code_to_id = np.full(int(self._id_to_code.max()) + 1, -1, dtype=np.int32)
        self._code_to_id[self._id_to_code] = np.arange(len(self.chars), dtype=np.int32)
        self._unknown_id = None if unknown_token is None else self.chars.index(unknown_token)
        self.end_of_text = bool(end_of_text)
        # The end-of-text id comes after every character's, so adding it leaves the character ids unchanged.
        self.eos_id: int | None = len(self.chars) if self.end_of_text else None

    @classmethod
    def from_text(cls, texts: str | Iterable[str], unknown_token: str | None = None,
                  end_of_text: bool = False) -> CharTokenizer:
        """Builds the vocabulary from the distinct characters of `texts`, one text or an iterator of them.

        An iterator is consumed chunk by chunk (only a table of the characters seen is kept), so the vocabulary
        of a corpus larger than memory takes one streaming pass.

        Raises:
            ValueError: if the texts are empty.
        """
        seen = np.zeros(_NUM_CODE_POINTS, dtype=bool)
        for text in [texts] if isinstance(texts, str) else texts:
            seen[_code_points(text)] = True
        if not seen.any():
            raise ValueError("CharTokenizer.from_text needs a non-empty text to take its characters from.")
        chars = np.flatnonzero(seen).astype("<u4").tobytes().decode(_UTF32, _SURROGATES)
        return cls(chars, unknown_token, end_of_text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + self.end_of_text

    @property
    def tokens(self) -> tuple[str, ...]:
        """The text of every id, in id order: the characters, then `<|endoftext|>` if there is an end-of-text id."""
        return self.chars + ((END_OF_TEXT,) if self.end_of_text else ())

    def _payload(self) -> dict:
        payload = {"kind": "char", "chars": list(self.chars), "unknown_token": self.unknown_token}
        # Only present when set, so a tokenizer without one keeps the fingerprint and file it always had.
        return {**payload, "end_of_text": True} if self.end_of_text else payload

    @property
    def fingerprint(self) -> str:
        """sha256 of the vocabulary, unknown token and end-of-text id: equal fingerprints encode every text alike."""
        return hashlib.sha256(json.dumps(self._payload()).encode("utf-8")).hexdigest()

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as an int32 numpy array [len(text)], without building a Python list."""
        codes = _code_points(text)  # [T]
        in_table = codes < len(self._code_to_id)
        ids = np.full(codes.shape, -1, dtype=np.int32)
        ids[in_table] = self._code_to_id[codes[in_table]]
        missing = ids < 0
        if missing.any():
            if self._unknown_id is None:
                position = int(np.argmax(missing))
                char = text[position]
                # Read by a script's user too (a prompt, a text to score or fine-tune on), for whom the fix is
                # the text or the model: the constructor argument comes last, named as one.
                raise ValueError(
                    f"Character {char!r} (U+{ord(char):04X}) at position {position} is not in this "
                    f"CharTokenizer's {self.vocab_size}-character vocabulary: the text it was built from (a model's "
                    f"training text) never holds it. Remove it from the text, or use a model or tokenizer built from "
                    f"text that holds it; a CharTokenizer constructed in Python can also map unseen characters to one "
                    f"character, given as its constructor argument `unknown_token` (e.g. `unknown_token='\\ufffd'`)."
                )
            ids[missing] = self._unknown_id
        return ids

    def encode(self, text: str) -> list[int]:
        """Returns one id per character of `text`.

        Raises:
            ValueError: if a character is outside the vocabulary and there is no `unknown_token`.
        """
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode_array` of each text: the batch interface a token store encodes chunks through."""
        return [self.encode_array(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of `ids` (any int sequence, numpy or tensor); the end-of-text id reads `<|endoftext|>`.

        Raises:
            ValueError: if an id is outside [0, vocab_size).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)  # [T]
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"Token id {int(ids[bad][0])} is outside this CharTokenizer's vocabulary [0, {self.vocab_size}); "
                "decode ids produced by the same tokenizer (or a model trained with it)."
            )
        if self.eos_id is None:
            return self._id_to_code[ids].astype("<u4").tobytes().decode(_UTF32, _SURROGATES)
        pieces = np.split(ids, np.flatnonzero(ids == self.eos_id))  # every piece after the first starts with eos
        return END_OF_TEXT.join(
            self._id_to_code[piece[i > 0:]].astype("<u4").tobytes().decode(_UTF32, _SURROGATES)
            for i, piece in enumerate(pieces)
        )

    def save(self, directory: str) -> None:
        """Writes `char_tokenizer.json` into `directory` (created if needed)."""
        # ASCII escapes: a lone surrogate (legal in a str, so in a vocabulary) has no UTF-8 form.
        atomic_write(os.path.join(directory, CHAR_FILE), json.dumps(self._payload(), indent=1))

    def to_hf(self):
        """The same mapping as an HF `tokenizers.Tokenizer` (one word per character), for `tokenizer.json`.

        Every character is its own pre-token and a word-level vocabulary maps it to its id, so HF's
        `AutoTokenizer` (and anything reading `tokenizer.json`) encodes and decodes as this class does, with one
        difference: with `end_of_text`, HF reads a literal `<|endoftext|>` in the text as the one end-of-text id
        (HF matches special tokens in text, as it does for GPT-2), where `encode` gives its 13 characters.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = {token: i for i, token in enumerate(self.tokens)}
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=self.unknown_token))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()  # join the characters with nothing between them
        if self.end_of_text:  # one token, as in a store, not thirteen characters
            tokenizer.add_special_tokens([END_OF_TEXT])
        return tokenizer

    @classmethod
    def from_hf_json(cls, text: str) -> CharTokenizer | None:
        """The `CharTokenizer` whose `to_hf` wrote the `tokenizer.json` `text` (same ids, end-of-text id and unknown
        token), or None for any other tokenizer.

        Recognised by its exact shape: rebuilt from the word-level vocabulary, the tokenizer serialises to the same
        JSON. Without this, an HF export of a char model would read back as a word-level `BPETokenizer`.
        """
        if '"WordLevel"' not in text:  # cheap: most tokenizer.json files are not word-level
            return None
        try:
            payload = json.loads(text)
            model = payload["model"]
            if model["type"] != "WordLevel":
                return None
            tokens = sorted(model["vocab"], key=model["vocab"].get)
            end_of_text = bool(tokens) and tokens[-1] == END_OF_TEXT
            chars = tokens[:-1] if end_of_text else tokens
            # to_hf names a missing unknown token WordLevel's default, "<unk>", which no character equals.
            unknown_token = model["unk_token"] if model["unk_token"] in chars else None
            candidate = cls(chars, unknown_token, end_of_text)
            if json.loads(candidate.to_hf().to_str()) == payload:
                return candidate
        except (ValueError, KeyError, TypeError, AttributeError):  # not JSON of this shape; ValueError from cls(...)
            pass
        return None

    @classmethod
    def load(cls, directory: str) -> CharTokenizer:
        """Reads a tokenizer written by `save`.

        Raises:
            FileNotFoundError: if `directory` has no `char_tokenizer.json`.
            ValueError: if the file is not a valid char tokenizer.
        """
        path = os.path.join(directory, CHAR_FILE)
        if not gfile(path).exists(path):
            raise FileNotFoundError(f"No {CHAR_FILE} in {directory!r}; save a CharTokenizer there first.")
        text = read_text(path)  # names the file if it is not UTF-8
        try:
            payload = json.loads(text)
            # Files written before the end-of-text id existed have no "end_of_text": they load as they were.
            chars, end_of_text = payload["chars"], payload.get("end_of_text", False)
            # Of another type they would still load: a string as its characters, "no" as true.
            if not isinstance(chars, list) or not isinstance(end_of_text, bool):
                raise TypeError(f"its chars is {json_kind(chars)} and its end_of_text {json_kind(end_of_text)}, not "
                                "an array and true or false")
            return cls(chars, payload.get("unknown_token"), end_of_text)
        except (ValueError, KeyError, TypeError) as error:  # ValueError: not JSON, or characters of another kind
            raise ValueError(f"{path} is not a valid CharTokenizer file ({error}); save the tokenizer again.") from None

    def __repr__(self) -> str:
        return (f"CharTokenizer(vocab_size={self.vocab_size}, unknown_token={self.unknown_token!r}, "
                f"eos_id={self.eos_id})")


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) on top of an HF `tokenizers.Tokenizer`.

    Byte-level means every string encodes (no unknown tokens) and decode(encode(text)) == text.

    Args:
        tokenizer: a `tokenizers.Tokenizer`. Usually made by `train` or `load`.

    Example:
    >>> tok = BPETokenizer.train("the cat sat on the mat " * 50, vocab_size=300)
    >>> tok.decode(tok.encode("the cat")) == "the cat"
    True
    """

    is_char_level = False

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        # One past the largest id, not the number of entries: a vocab.json may leave gaps (a special token at a
        # high id), and every id must fit the model's table and the store's dtype.
        self._vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self.eos_id: int | None = tokenizer.token_to_id(END_OF_TEXT)
        padding = tokenizer.padding
        self.pad_id: int | None = None if padding is None else padding["pad_id"]

    @classmethod
    def train(cls, text_or_iterator: str | Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB_SIZE,
              min_frequency: int = 2) -> BPETokenizer:
        """Trains byte-level BPE with an `<|endoftext|>` special token.

        Args:
            text_or_iterator: str, or an iterator of str (e.g. documents).
            vocab_size: int, default 4096. Target vocabulary size, including the 256 byte tokens and
                `<|endoftext|>`; a small corpus may stop short of it.
            min_frequency: int, default 2. Pairs seen fewer times are not merged.

        Raises:
            ValueError: if `vocab_size` < 257.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        cls.check_vocab_size(vocab_size)
        tokenizer = Tokenizer(models.BPE())
        # GPT-2's setup: no prefix space, byte-level pre-tokenizer and decoder, so decode is exact.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        texts = [text_or_iterator] if isinstance(text_or_iterator, str) else text_or_iterator
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @staticmethod
    def check_vocab_size(vocab_size, name: str = "vocab_size") -> None:
        """Raises ValueError unless `vocab_size` is one `train` accepts: an integer >= 257. The message names the
        caller's argument `name` (`prepare_store`'s is `bpe_vocab_size`)."""
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 257:
            raise ValueError(
                f"A BPE vocabulary needs `{name}` to be an integer >= 257 (256 bytes + {END_OF_TEXT}). "
                f"Received: `{name}={vocab_size!r}`"
            )

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def fingerprint(self) -> str:
        """sha256 of the serialised tokenizer (vocabulary, merges, pre-tokenizer): equal means equal ids."""
        return hashlib.sha256(self._tokenizer.to_str().encode("utf-8")).hexdigest()

    # add_special_tokens=False: a tokenizer.json with a post-processor (RoBERTa's <s>...</s>) would otherwise wrap
    # every chunk of a document; ends of documents are marked by the store, with eos.
    def encode(self, text: str) -> list[int]:
        """Returns the ids of `text`.

        Raises:
            ValueError: if the tokenizer cannot encode it (a loaded word-level `tokenizer.json` without the text's
                word or an unknown token).
        """
        with _encode_errors():
            return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text, encoded in parallel on every core (HF `tokenizers` threads).

        Raises:
            ValueError: as `encode`.
        """
        # encode_batch_fast skips the character offsets, which nothing here reads: ~1.5x the speed.
        with _encode_errors():
            encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of `ids`; special tokens such as `<|endoftext|>` are kept.

        Raises:
            ValueError: if an id is outside [0, vocab_size).
        """
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"Token id {bad[0]} is outside this BPETokenizer's vocabulary [0, {self.vocab_size}); "
                "decode ids produced by the same tokenizer (or a model trained with it)."
            )
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def to_hf(self):
        """The HF `tokenizers.Tokenizer` behind this one (what `tokenizer.json` holds)."""
        return self._tokenizer

    def save(self, directory: str) -> None:
        """Writes HF `tokenizer.json` into `directory` (created if needed)."""
        atomic_write(os.path.join(directory, BPE_FILE), self._tokenizer.to_str(pretty=True))

    @classmethod
    def load(cls, directory: str) -> BPETokenizer:
        """Reads `tokenizer.json`, or GPT-2 style `vocab.json` + `merges.txt`, from `directory`.

        Raises:
            FileNotFoundError: if neither form is there.
            ValueError: if the files are not a valid tokenizer.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        json_path = os.path.join(directory, BPE_FILE)
        vocab_path = os.path.join(directory, GPT2_VOCAB_FILE)
        merges_path = os.path.join(directory, GPT2_MERGES_FILE)
        files = gfile(directory)
        try:
            if files.exists(json_path):
                return cls(Tokenizer.from_str(read_text(json_path)))
            if files.exists(vocab_path) and files.exists(merges_path):
                # Parsed here rather than by BPE.from_file, which only opens local paths.
                merges = [tuple(line.split(" ")) for line in read_text(merges_path).splitlines()
                          if line and not line.startswith("#version")]
                tokenizer = Tokenizer(models.BPE(json.loads(read_text(vocab_path)), merges))
                tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                tokenizer.decoder = decoders.ByteLevel()
                # GPT-2's vocab.json already holds <|endoftext|>; marking it special keeps it one token.
                if END_OF_TEXT in tokenizer.get_vocab():
                    tokenizer.add_special_tokens([END_OF_TEXT])
                return cls(tokenizer)
        except Exception as error:  # tokenizers raises a bare Exception for malformed files.
            raise ValueError(
                f"Could not read the BPE tokenizer in {directory!r} ({error}); the files are damaged."
            ) from None
        raise FileNotFoundError(
            f"No {BPE_FILE} (or {GPT2_VOCAB_FILE} + {GPT2_MERGES_FILE}) in {directory!r}; "
            "save a BPETokenizer there or copy GPT-2's tokenizer files in."
        )

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


@contextlib.contextmanager
def _encode_errors():
    """Turns the bare `Exception` HF `tokenizers` raises for text it cannot encode into a one-line ValueError."""
    try:
        yield
    except Exception as error:
        if type(error) is not Exception:  # a TypeError for a non-str text, say, stays what it is
            raise
        message = " ".join(str(error).split())
        raise ValueError(
            f"The tokenizer cannot encode this text ({message}); use a tokenizer whose vocabulary covers it."
        ) from None


def load_tokenizer(directory: str) -> CharTokenizer | BPETokenizer:
    """Loads whichever tokenizer `directory` holds, chosen by its files; a tf_lm model directory (a train_lm
    `--model_dir`) gives the tokenizer in its `model/tokenizer/`.

    A `tokenizer.json` that `CharTokenizer.to_hf` wrote (an HF export of a char model) loads as that
    `CharTokenizer`; any other as a `BPETokenizer`.

    Raises:
        FileNotFoundError: if `directory` does not exist or holds no tokenizer files.

    Example:
    >>> tok = load_tokenizer("runs/shakespeare/tokenizer")  # doctest: +SKIP
    """
    problem = not_a_directory(directory)
    if problem is not None:
        raise FileNotFoundError(
            f"Tokenizer directory {directory!r} {problem}; pass the directory a tokenizer was saved to."
        )
    files = gfile(directory)
    if files.exists(os.path.join(directory, CHAR_FILE)):
        return CharTokenizer.load(directory)
    json_path = os.path.join(directory, BPE_FILE)
    if files.exists(json_path):
        char = CharTokenizer.from_hf_json(read_text(json_path))
        if char is not None:
            return char
    names = (BPE_FILE, GPT2_VOCAB_FILE, GPT2_MERGES_FILE)
    if any(files.exists(os.path.join(directory, name)) for name in names):
        return BPETokenizer.load(directory)
    model_tokenizer = os.path.join(directory, MODEL_DIR_TOKENIZER)
    if files.isdir(model_tokenizer):
        return load_tokenizer(model_tokenizer)
    raise FileNotFoundError(
        f"No tokenizer in {directory!r}: expected {CHAR_FILE}, {BPE_FILE}, or {GPT2_VOCAB_FILE} + {GPT2_MERGES_FILE}, "
        f"or a tf_lm model directory's {MODEL_DIR_TOKENIZER}/."
    )


def build_tokenizer(kind: str, texts: str | Iterable[str],
                    vocab_size: int | None = None) -> CharTokenizer | BPETokenizer:
    """Builds a tokenizer of `kind` from `texts`: the one place a `--tokenizer` value maps onto a class.

    Both kinds have an end-of-text id (`eos_id`), which a token store puts after every document.

    Args:
        kind: "char" or "bpe".
        texts: str, or an iterator of str (e.g. chunks of the training documents, consumed once).
        vocab_size: int or None. BPE's target size (default 4096). A char vocabulary is the text's
            characters, so it must be None for "char".

    Raises:
        ValueError: on an unknown kind, on `vocab_size` for "char", or an empty text.

    Example:
    >>> build_tokenizer("char", "abcab").vocab_size  # a, b, c and the end-of-text id
    4
    """
    if kind == "char":
        if vocab_size is not None:
            raise ValueError(
                f"A char tokenizer's vocabulary is the text's characters; drop vocab_size or use kind='bpe'. "
                f"Received: vocab_size={vocab_size}"
            )
        return CharTokenizer.from_text(texts, end_of_text=True)
    if kind == "bpe":
        if isinstance(texts, str) and not texts:
            raise ValueError("BPETokenizer needs a non-empty text to train on.")
        return BPETokenizer.train(texts, vocab_size=DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    raise ValueError(f"Unknown tokenizer kind {kind!r}; choose one of {list(TOKENIZER_KINDS)}.")
