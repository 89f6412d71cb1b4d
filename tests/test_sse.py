"""The SSE decoder is incremental: any split of a byte stream yields the same events."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import SSEDecoder, frame

payloads = st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b), min_size=1, max_size=12)


def decode(stream: bytes, cuts: list[int]) -> list[tuple[bytes, str | None]]:
    decoder = SSEDecoder()
    events = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    return [(e.data, e.event) for e in events]


@given(payloads, st.lists(st.integers(min_value=0, max_value=2000), max_size=30), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_split_and_line_ending_gives_the_same_events(datas: list[bytes], cuts: list[int], eol: bytes) -> None:
    stream = b"".join(frame(d).replace(b"\n", eol) for d in datas)
    cuts = [c for c in cuts if c <= len(stream)]
    assert decode(stream, cuts) == [(d, None) for d in datas]


def test_event_names_comments_and_multiline_data() -> None:
    stream = b': keep-alive\n\nevent: error\ndata: {"a":\ndata: 1}\n\nretry: 5\n\n'
    assert decode(stream, [3, 17]) == [(b'{"a":\n1}', "error")]


def test_memory_is_bounded_by_the_largest_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(ValueError):
        decoder.feed(b"y" * 100)


def test_unfinished_tail_is_pending() -> None:
    decoder = SSEDecoder()
    assert [e.data for e in decoder.feed(b"data: 1\n\ndata: 2")] == [b"1"]
    assert decoder.pending
    assert [e.data for e in decoder.feed(b"\n\n")] == [b"2"]
    assert not decoder.pending
