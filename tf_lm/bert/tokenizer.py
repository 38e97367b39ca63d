"""`WordPieceTokenizer`: BERT's tokenizer from a checkpoint directory through HF `tokenizers` (Rust), no transformers.

It is called like a Hugging Face tokenizer on a list of texts (`tokenizer(texts, truncation=True,
max_length=64)["input_ids"]`), which is all `tf_lm.bert.data.encode` needs, so both backends share the data path.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable

from tf_lm.fileio import check_json_types, damaged_json, gfile, is_local, read_bytes, read_json_object, read_text

# transformers' "no limit" for a checkpoint whose config sets none is 1e30; `tokenizers` truncates to a usize.
UNLIMITED_LENGTH = 10**6
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# transformers' BertTokenizerFast defaults for what `tokenizer_config.json` does not say.
_SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "cls_token": "[CLS]", "pad_token": "[PAD]",
                  "mask_token": "[MASK]"}
_TOKEN = "a token (a string, or an object with a string content)"


def _content(token) -> str:
    """A special token's text: a string, or (as older transformers wrote them) an AddedToken's dict."""
    return token["content"] if isinstance(token, dict) else token


_ADDED_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _is_token(value) -> bool:
    """A special token as `tokenizer_config.json` holds one: a string, or an AddedToken's dict."""
    return isinstance(value, str) or isinstance(value, dict) and isinstance(value.get("content"), str)


def _is_added_token(value) -> bool:
    """An `added_tokens_decoder` entry: an AddedToken's dict (transformers takes no string there), its flags bools."""
    return (isinstance(value, dict) and _is_token(value)
            and all(isinstance(value.get(flag, False), bool) for flag in _ADDED_TOKEN_FLAGS))


def _is_bool(value) -> bool:
    return isinstance(value, bool)


# Special tokens BERT does not use, which transformers still reads as tokens (of another type: its TypeError).
_UNUSED_TOKENS = ("bos_token", "eos_token")


# The keys of `tokenizer_config.json` that this module or transformers' `BertTokenizerFast` reads, with what each
# must hold: of another type, `tokenizers` and transformers fail deep inside (a TypeError, an AttributeError), or
# `finetune` compares a string `model_max_length` with a number, all printed by the scripts as tracebacks. null is
# what transformers takes for "unset" where it does so.
_TOKENIZER_CONFIG_TYPES = {
    "do_lower_case": (_is_bool, "true or false"),
    "tokenize_chinese_chars": (_is_bool, "true or false"),
    "strip_accents": (lambda value: value is None or _is_bool(value), "true, false or null"),
    "model_max_length": (lambda value: value is None or type(value) is int and value >= 1, "a positive integer"),
    **{name: (_is_token, _TOKEN) for name in _SPECIAL_TOKENS},
    **{name: (lambda value: value is None or _is_token(value), f"{_TOKEN} or null") for name in _UNUSED_TOKENS},
    "additional_special_tokens": (lambda value: value is None or isinstance(value, list), "a list of tokens"),
    "added_tokens_decoder": (lambda value: isinstance(value, dict), "an object of tokens by id"),
    # Read by transformers' AutoTokenizer only: a class name (an int there fails in getattr), and the names of the
    # inputs a call returns (a string there returns the ids alone).
    "tokenizer_class": (lambda value: value is None or isinstance(value, str), "a class name or null"),
    "model_input_names": (lambda value: isinstance(value, list) and all(isinstance(name, str) for name in value),
                          "a list of input names"),
}


def read_tokenizer_config(directory: str) -> dict:
    """The `tokenizer_config.json` of `directory`, {} if it has none.

    Raises:
        ValueError: if the file is not a JSON object, or a key either backend reads holds a value of another type,
            naming the file and the key (and the entry of a list or object).
    """
    path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    if not gfile(path).exists(path):
        return {}
    config = _read_token_file(path, _TOKENIZER_CONFIG_TYPES)
    for token_id, token in config.get("added_tokens_decoder", {}).items():
        if not re.fullmatch(r"[0-9]+", token_id):
            raise damaged_json(path, f"its added_tokens_decoder has the key {token_id!r}, not a token id (a string "
                                     "of digits)")
        if not _is_added_token(token):
            raise damaged_json(path, f"its added_tokens_decoder[{token_id!r}] is {token!r}, not an object with a "
                                     f"string content and flags ({', '.join(_ADDED_TOKEN_FLAGS)}) true or false")
    return config


def read_special_tokens_map(directory: str) -> dict:
    """The `special_tokens_map.json` of `directory`, {} if it has none.

    Raises:
        ValueError: if the file is not a JSON object, or one of its tokens is not a token, naming the file and key.
    """
    path = os.path.join(directory, SPECIAL_TOKENS_MAP_FILE)
    if not gfile(path).exists(path):
        return {}
    return _read_token_file(path, {key: _TOKENIZER_CONFIG_TYPES[key]
                                   for key in (*_SPECIAL_TOKENS, *_UNUSED_TOKENS, "additional_special_tokens")})


def _read_token_file(path: str, types: dict) -> dict:
    """The JSON object in `path`, its keys checked against `types` and its additional special tokens one by one
    (a file's list of tokens can be long, and the message names the one that is wrong)."""
    values = read_json_object(path)
    check_json_types(path, values, types)
    for i, token in enumerate(values.get("additional_special_tokens") or []):
        if not _is_token(token):
            raise damaged_json(path, f"its additional_special_tokens[{i}] is {token!r}, not {_TOKEN}")
    return values


def _special_tokens(directory: str, config: dict) -> tuple[dict[str, str], list[str]]:
    """The special tokens transformers gives a BERT tokenizer of `directory`, and its additional special tokens.

    `tokenizer_config.json`'s, except that a config written before `added_tokens_decoder` existed is overridden by
    `special_tokens_map.json`, whose additional tokens are appended: transformers reads the map in that case only.
    """
    tokens = {name: config.get(name, default) for name, default in _SPECIAL_TOKENS.items()}
    additional = [_content(token) for token in config.get("additional_special_tokens") or []]
    if "added_tokens_decoder" not in config:
        mapped = read_special_tokens_map(directory)
        tokens.update({name: mapped[name] for name in _SPECIAL_TOKENS if name in mapped})
        additional += [token for token in map(_content, mapped.get("additional_special_tokens") or [])
                       if token not in additional]
    return {name: _content(token) for name, token in tokens.items()}, additional


def read_tokenizer_json(path: str):
    """`tokenizers.Tokenizer.from_file(path)`, on any filesystem.

    Raises:
        ValueError: if the file is damaged (`tokenizers` raises a bare Exception, which scripts would print as a
            traceback).
    """
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(read_text(path))
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is damaged ({reason}); replace it with an intact copy.") from None


def _added_tokens(directory: str, config: dict, special_tokens: dict[str, str], additional: list[str]) -> list:
    """The tokens `add_tokens` put past `vocab.txt`, in id order, as transformers reads them beside a `vocab.txt`:
    `tokenizer_config.json`'s `added_tokens_decoder`, else the older `added_tokens.json` (`{token: id}`, the
    special tokens among them, the `additional` ones included, matched as written, the others after
    normalisation)."""
    from tokenizers import AddedToken

    decoder = config.get("added_tokens_decoder")
    if decoder is not None:
        fields = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
        return [AddedToken(**{key: value for key, value in token.items() if key in fields})
                for _, token in sorted(decoder.items(), key=lambda item: int(item[0]))]
    path = os.path.join(directory, ADDED_TOKENS_FILE)
    if not gfile(path).exists(path):
        return []
    encoder = read_json_object(path)
    specials = {*special_tokens.values(), *additional}
    return [AddedToken(token, normalized=token not in specials, special=token in specials)
            for token, _ in sorted(encoder.items(), key=lambda item: item[1])]


def _check_in_vocabulary(directory: str, named: Iterable[tuple[str, str]], vocabulary) -> None:
    """Raises ValueError for a special token (`(name, token)` pairs) that `vocabulary` lacks. transformers would add
    it as a new token, past the embeddings of a checkpoint whose files did not record it (a damaged or hand-edited
    file): the model's lookup of that id fails, or (on a GPU) reads zeros."""
    for name, token in named:
        if token not in vocabulary:
            raise ValueError(
                f"The {name} {token!r} of the tokenizer in {directory!r} (from its {TOKENIZER_CONFIG_FILE} or "
                f"{SPECIAL_TOKENS_MAP_FILE}) is not in its vocabulary; restore those files."
            )


def _override_normalizer(tokenizer, lowercase: bool, strip_accents: bool | None, chinese_chars: bool) -> None:
    """Sets `tokenizer.json`'s BERT normalizer to `tokenizer_config.json`'s casing, accents and CJK handling, as
    `BertTokenizerFast.__init__` does (so a cased config wins over a lowercasing `tokenizer.json`)."""
    if tokenizer.normalizer is None:
        return
    from tokenizers import normalizers

    state = json.loads(tokenizer.normalizer.__getstate__())
    wanted = {"lowercase": lowercase, "strip_accents": strip_accents, "handle_chinese_chars": chinese_chars}
    # Keys the normalizer lacks (another type than BertNormalizer) count as matching, as in transformers.
    if any(state.get(key, value) != value for key, value in wanted.items()):
        normalizer_class = getattr(normalizers, state.pop("type"))
        tokenizer.normalizer = normalizer_class(**{**state, **wanted})


class WordPieceTokenizer:
    """WordPiece ids with [CLS] ... [SEP], read from `tokenizer.json` or, failing that, `vocab.txt`.

    Args:
        directory: str. A checkpoint directory with `tokenizer.json` or `vocab.txt`, and optionally
            `tokenizer_config.json`: its `model_max_length`, `pad_token`, `do_lower_case` (default True),
            `strip_accents` and `tokenize_chinese_chars` (default True), which replace `tokenizer.json`'s own
            normalizer settings, and, with `vocab.txt`, its special tokens and added tokens (`added_tokens_decoder`,
            else `added_tokens.json`); and `special_tokens_map.json`, whose special tokens replace the config's
            when it has no `added_tokens_decoder`. Read as `transformers.BertTokenizerFast` reads them (the same ids
            as the hf backend).

    Attributes:
        directory: str. Where the files came from (an export copies them).
        pad_token_id: int. Id of `[PAD]`.
        model_max_length: int. Longest input the checkpoint's tokenizer config allows; if it sets none,
            `UNLIMITED_LENGTH` (as transformers, the model's positions are then the only limit).

    Raises:
        FileNotFoundError: if the directory holds neither file.
        ValueError: if `tokenizer.json` is damaged, `tokenizer_config.json`, `special_tokens_map.json` or
            `added_tokens.json` is not a JSON object, a key of the first two holds a value of another type, or a
            special token is not in the vocabulary.

    Example:
    >>> WordPieceTokenizer(resolve_local("minilm"))(["a fine film"])["input_ids"]
    [[101, 1037, 2986, 2143, 102]]
    """

    def __init__(self, directory: str):
        from tokenizers import AddedToken
        from tokenizers.implementations import BertWordPieceTokenizer

        self.directory = directory
        config = read_tokenizer_config(directory)
        self.model_max_length = min(config.get("model_max_length") or UNLIMITED_LENGTH, UNLIMITED_LENGTH)
        special_tokens, additional = _special_tokens(directory, config)
        named_additional = [("additional_special_tokens", token) for token in additional]
        named = [*special_tokens.items(), *named_additional]
        # strip_accents None: strip them when lowercasing, as BERT's uncased models were trained.
        normalizer = {"lowercase": config.get("do_lower_case", True), "strip_accents": config.get("strip_accents"),
                      "chinese_chars": config.get("tokenize_chinese_chars", True)}
        json_path, vocab_path = os.path.join(directory, "tokenizer.json"), os.path.join(directory, "vocab.txt")
        if gfile(json_path).exists(json_path):
            self._tokenizer = read_tokenizer_json(json_path)
            _override_normalizer(self._tokenizer, **normalizer)
            _check_in_vocabulary(directory, named, self._tokenizer.get_vocab())
        elif gfile(vocab_path).exists(vocab_path):
            from tokenizers.models import WordPiece

            # `tokenizers` reads a vocabulary from a local file only; one elsewhere is read through a local copy,
            # so its lines are parsed by the same code.
            with tempfile.TemporaryDirectory(prefix="tf_lm_vocab_") as scratch:
                if not is_local(vocab_path):
                    local_copy = os.path.join(scratch, "vocab.txt")
                    with open(local_copy, "wb") as f:
                        f.write(read_bytes(vocab_path))
                    vocab_path = local_copy
                vocabulary = WordPiece.read_file(vocab_path)
            added = _added_tokens(directory, config, special_tokens, additional)
            # [CLS] ... [SEP] are built from vocab.txt's ids alone; the additional tokens may be added ones.
            _check_in_vocabulary(directory, special_tokens.items(), vocabulary)
            _check_in_vocabulary(directory, named_additional, {*vocabulary, *(token.content for token in added)})
            self._tokenizer = BertWordPieceTokenizer(
                vocabulary, **special_tokens, lowercase=normalizer["lowercase"],
                strip_accents=normalizer["strip_accents"], handle_chinese_chars=normalizer["chinese_chars"],
            )
            # One call in id order, as transformers adds them: each new token takes the next id.
            self._tokenizer.add_tokens(added)
        else:
            raise FileNotFoundError(f"No tokenizer (tokenizer.json or vocab.txt) in {directory!r}.")
        # As transformers, every special token is matched whole before WordPiece, the additional ones too, which the
        # files may hold as plain vocabulary entries.
        registered = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        self._tokenizer.add_tokens([AddedToken(token, special=True)
                                    for token in dict.fromkeys(token for _, token in named) if token not in registered])
        # Padding and truncation are chosen per call; the file's own settings (MiniLM pads to 128) are dropped.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.pad_token_id = self._tokenizer.token_to_id(special_tokens["pad_token"])

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None) -> dict:
        """`{"input_ids": list of lists of int}`, each cut to `max_length` tokens (specials included) if
        `truncation`; to `model_max_length` if `max_length` is None, as transformers does."""
        if truncation:
            self._tokenizer.enable_truncation(self.model_max_length if max_length is None else max_length)
        else:
            self._tokenizer.no_truncation()
        return {"input_ids": [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]}
