"""Per-team guardrails: deny lists, and redaction of sensitive data before a request leaves.

A team's `[guardrails]` section is compiled once, at policy load, into a frozen `Guardrails`.
`screen` finds the text an OpenAI-format body sends upstream (chat message content and text
parts, tool-call arguments, completion prompts, embedding inputs) and makes two passes over it.
First each deny rule, in the order configured, is tried against the original text: a match
rejects the request with a 400 that names the rule but never repeats what it matched. Then each
enabled redaction replaces what it finds with `[REDACTED:<kind>]`, always in the order secrets,
e-mail, cards, phones, so that the looser number patterns never see half of a key or a card.

The patterns lean towards precision, because a redaction that fires on dates, years or tables of
figures silently corrupts prompts: a card must pass the Luhn check, and a phone number needs a
country code, an area code in parentheses or a recognised grouping (`_is_phone`). A body with
nothing to redact costs one quick look per pattern over all of its text (`_hinted`). Tool-call
arguments are JSON: they are decoded and their string values screened, so that a replacement can
never break the JSON a provider will parse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
import regex  # type: ignore[import-untyped]  # re's syntax, and it can match without the GIL
from pydantic import Field, field_validator

from gateway.config.schema import Strict
from gateway.errors import BadRequest

RedactKind = Literal["email", "phone", "card", "secret"]


class DenyRule(Strict):
    name: str = Field(min_length=1)  # shown to the client when the rule matches
    pattern: str  # a Python regular expression, searched case-insensitively

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            _unlocked(re.compile(pattern, re.IGNORECASE))
        except (re.error, regex.error) as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class GuardrailsSection(Strict):
    redact: list[RedactKind] = []
    deny: list[DenyRule] = []
    max_request_tokens: int | None = Field(None, ge=1)  # enforced where requests are counted, not here


# Speed: Python's regex engine skips quickly to a pattern's leading literal (less quickly to a
# leading character class), but tries every position when a pattern opens with a lookbehind; so a
# boundary is checked just after the first characters wherever it can be. A pattern that cannot open
# with a literal gets a hint: a quicker pattern found in every match, whose absence skips the text.
# Linear time on any text, however hostile: no repetition can rescan the same characters from many
# starting points without a bound.


@dataclass(frozen=True, slots=True)
class _Redaction:
    kind: str
    pattern: re.Pattern[str]
    hint: re.Pattern[str] | None = None  # found at most `lead` characters into every match; None: the pattern itself
    lead: int = 0
    span: Callable[[re.Match[str]], tuple[int, int] | None] | None = None  # what to replace, None for nothing; default: the match

    def start(self, text: str) -> int:
        """Where in `text` matching may begin, or -1 when nothing can match."""
        found = (self.hint or self.pattern).search(text)
        return -1 if found is None else max(0, found.start() - self.lead)

    def apply(self, text: str) -> tuple[str, int]:
        if (pos := self.start(text)) < 0:
            return text, 0
        marker = f"[REDACTED:{self.kind}]"
        if self.span is None:
            return self.pattern.subn(marker, text)
        pieces: list[str] = []
        end = 0
        for match in self.pattern.finditer(text, pos):
            span = self.span(match)
            if span is not None and span[0] >= end:
                pieces += (text[end : span[0]], marker)
                end = span[1]
        if not pieces:
            return text, 0
        pieces.append(text[end:])
        return "".join(pieces), len(pieces) // 2


def _secret(pattern: str, span: Callable[[re.Match[str]], tuple[int, int] | None] | None = None) -> _Redaction:
    return _Redaction("secret", re.compile(pattern, re.ASCII | re.DOTALL), span=span)


def _token(match: re.Match[str]) -> tuple[int, int]:
    return match.span("token")


# sk-, Slack and Bearer tokens must hold a digit, as random ones do, so that hyphenated prose is left alone.
_PEM_LINES = r"(?:\s*(?:[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9+/]*={1,2}|(?:Proc-Type|DEK-Info):[^\n]*))*"
_SECRETS = (
    _secret(r"sk-(?<!\wsk-)(?=[A-Za-z_-]{0,64}\d)[\w-]{20,}"),  # OpenAI (sk-, sk-proj-, ...) and Anthropic (sk-ant-) keys
    _secret(r"A[KS]IA(?<!\wA[KS]IA)[0-9A-Z]{16}\b"),  # AWS access key ids
    _secret(r"gh[oprsu]_(?<!\wgh._)[A-Za-z0-9]{36,}"),  # GitHub tokens
    _secret(r"github_pat_(?<!\wgithub_pat_)\w{22,}"),  # GitHub fine-grained tokens
    _secret(r"xox[abprs]-(?<!\wxox.-)(?=[A-Za-z-]{0,64}\d)[A-Za-z0-9-]{10,}"),  # Slack
    _secret(r"AIza(?<!\wAIza)[\w-]{35}"),  # Google API keys
    _secret(r"earer (?<=\b[Bb]earer )(?=[A-Za-z_.~+/-]*\d)(?P<token>[\w.~+/-]{16,}=*)", _token),  # the token, not the word
    # a private key's body stops at the first "-----": its END line, or else it was cut off and only its lines go
    _secret(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?:(?:[^-]|-(?!----))*?-----END[A-Z0-9 ]*PRIVATE KEY-----|" + _PEM_LINES + ")"),
    _secret(r"eyJ(?<!\weyJ)[\w-]{4,400}\.eyJ[\w-]{4,}(?:\.[\w-]*)?"),  # JWTs: base64url '{"' header and payload
)

# The domain is matched first (its '@' is quick to find); the local part is then found by looking back.
_DOMAIN = re.compile(r"@(?:[\w-]{1,63}\.){1,8}[^\W\d_]{2,63}")
_LOCAL_PART = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}\Z")


def _email(match: re.Match[str]) -> tuple[int, int] | None:
    local = _LOCAL_PART.search(match.string, max(0, match.start() - 65), match.start())
    return None if local is None else (local.start(), match.end())


# Major industry identifiers 2-6 are the payment networks; 1 (airlines), 7-9 (fuel, telecoms, national)
# are not, and leaving them out spares millisecond timestamps and snowflake ids that happen to pass Luhn.
_CARD = re.compile(
    r"[2-6]\d{3}(?<![\w.]....)(?<!\d[ -]....)"  # not inside a word or a longer run of figures
    r"(?:\d{9,15}|(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?|(?P<t>[ -])\d{6}(?P=t)\d{4,5})"
    r"(?!\w)",
    re.ASCII,
)


def _card(match: re.Match[str]) -> tuple[int, int] | None:
    return match.span() if _luhn(match.group().replace(" ", "").replace("-", "")) else None


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_PHONE = re.compile(
    r"(?=[+(\d])(?<![\w+])(?<!\d[.-])"  # the lookahead first, as it is quick to fail; not inside a word, a sum or a longer number
    r"(?=(?:[ .()+-]{0,3}\d){9})"  # nine digits ahead, or it cannot be one
    r"(?:\+(?P<cc>\d{1,3})[ .-]?)?"
    r"(?:\((?P<area>\d{1,5})\)[ .-]?)?"
    r"(?P<local>\d{1,12}(?:(?P<sep>[ .-])\d{1,8}(?:(?P=sep)\d{1,8}){0,5})?)"  # one separator throughout
    r"(?!\w)(?![.-]\d)",
    re.ASCII,
)


def _phone(match: re.Match[str]) -> tuple[int, int] | None:
    return match.span() if _is_phone(match) else None


def _is_phone(match: re.Match[str]) -> bool:
    digits = sum(c.isdigit() for c in match.group())
    if match.group("cc") is not None:
        return 9 <= digits <= 15  # E.164 allows 15
    if not 9 <= digits <= 13:
        return False
    if match.group("area") is not None:
        return True
    sep = match.group("sep")
    return sep is not None and _national_grouping(match.group("local").split(sep), sep)


def _national_grouping(groups: list[str], sep: str) -> bool:
    """Whether digit groups without a country code read as a phone number rather than figures."""
    sizes = tuple(len(g) for g in groups)
    if min(sizes[1:]) < 2 or all(n == 3 for n in sizes[1:]):
        return False  # ISBNs and version strings; thousands grouping (1.234.567.890)
    if all(n == 4 and g[:2] in ("19", "20") for n, g in zip(sizes, groups, strict=True)):
        return False  # a run of years
    if sizes == (5, 4) or (sep == "." and len(sizes) == 4 and max(sizes) <= 3):
        return False  # a ZIP+4 code; an IPv4 address
    if sep == " ":  # spaces also separate columns of figures: only a trunk 0 or the NANP shape
        nanp = sizes[-3:] == (3, 3, 4) and groups[-3][0] in "23456789" and groups[-2][0] in "23456789"
        return groups[0][0] == "0" or (nanp and (len(groups) == 3 or groups[0] == "1"))
    return True


# Nine digits with no more between them than a phone number allows; every card and phone number has some.
_DIGIT_RUN = re.compile(r"\d(?:[ .()-]{0,2}\d){8}", re.ASCII)
_REDACTIONS: dict[str, tuple[_Redaction, ...]] = {  # in the order they run
    "secret": _SECRETS,
    "email": (_Redaction("email", _DOMAIN, span=_email),),
    "card": (_Redaction("card", _CARD, _DIGIT_RUN, span=_card),),
    "phone": (_Redaction("phone", _PHONE, _DIGIT_RUN, lead=2, span=_phone),),
}


@dataclass(frozen=True, slots=True)
class Guardrails:
    deny: tuple[tuple[str, re.Pattern[str]], ...]  # (rule name, compiled pattern), in configured order
    redactions: tuple[_Redaction, ...]
    max_request_tokens: int | None
    unlocked: Guardrails | None = None  # the same, in the `regex` engine, for bodies screened in a worker thread

    @classmethod
    def compile(cls, section: GuardrailsSection) -> Guardrails | None:
        """The live guardrails for a section, or None when it configures nothing."""
        if not section.redact and not section.deny and section.max_request_tokens is None:
            return None
        deny = tuple((rule.name, re.compile(rule.pattern, re.IGNORECASE)) for rule in section.deny)
        redactions = tuple(r for kind, patterns in _REDACTIONS.items() if kind in section.redact for r in patterns)
        twins = tuple((name, _unlocked(pattern)) for name, pattern in deny)
        unlocked = cls(twins, tuple(_UNLOCKED[id(r)] for r in redactions), section.max_request_tokens)
        return cls(deny, redactions, section.max_request_tokens, unlocked)

    async def screen_async(self, body: dict[str, Any], size: int) -> dict[str, int]:
        """`screen` for a body of `size` bytes: over INLINE_BYTES in a worker thread, with the patterns
        in the `regex` engine, which matches without the GIL, so the event loop keeps serving (the
        body is this request's own: nothing else touches it meanwhile). Smaller bodies stay on the
        loop with `re`, which is about twice as quick per call on short texts."""
        if size <= INLINE_BYTES or self.unlocked is None:
            return self.screen(body)
        return await asyncio.to_thread(self.unlocked.screen, body)

    def screen(self, body: dict[str, Any]) -> dict[str, int]:
        """Reject the body if a deny rule matches, else redact it in place; the count of each kind replaced."""
        if not self.deny and not self.redactions:
            return {}
        texts = list(_texts(body))
        for name, pattern in self.deny:
            for slot in texts:
                if pattern.search(slot.text):
                    denied = BadRequest(
                        f"The request was blocked by the guardrail rule {name!r}.", param=slot.param, code="guardrail_denied"
                    )
                    denied.reason = f"guardrail_denied:{name}"
                    raise denied
        redactions = _hinted(self.redactions, "\0".join(slot.text for slot in texts)) if texts else ()
        return _redact(texts, redactions) if redactions else {}


INLINE_BYTES = 32_768  # bodies up to this size are screened on the event loop (~0.5 ms with every redaction)
_FLAGS = ((re.IGNORECASE, regex.IGNORECASE), (re.ASCII, regex.ASCII), (re.DOTALL, regex.DOTALL))


class _Unlocked:
    """A pattern compiled by `regex`, matching with the GIL released: the part of `re.Pattern`'s API
    this module uses. The patterns here are written in the syntax both engines share, and a property
    test holds the two engines to the same verdicts, replacements and counts (tests/test_big_bodies.py)."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        flags = 0
        for ours, theirs in _FLAGS:
            flags |= theirs if pattern.flags & ours else 0
        self._compiled = regex.compile(pattern.pattern, flags)
        self.pattern = pattern.pattern

    def search(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        return cast("re.Match[str] | None", self._compiled.search(text, pos, endpos, concurrent=True))

    def finditer(self, text: str, pos: int = 0) -> Iterator[re.Match[str]]:
        return cast("Iterator[re.Match[str]]", self._compiled.finditer(text, pos, concurrent=True))

    def subn(self, repl: str, text: str) -> tuple[str, int]:
        return cast("tuple[str, int]", self._compiled.subn(repl, text, concurrent=True))


def _unlocked(pattern: re.Pattern[str]) -> re.Pattern[str]:
    return cast("re.Pattern[str]", _Unlocked(pattern))


def _twin(redaction: _Redaction, twins: dict[int, re.Pattern[str]]) -> _Redaction:
    """`redaction` in the `regex` engine; a hint shared by several redactions stays shared."""
    for pattern in (redaction.pattern, redaction.hint):
        if pattern is not None and id(pattern) not in twins:
            twins[id(pattern)] = _unlocked(pattern)
    hint = None if redaction.hint is None else twins[id(redaction.hint)]
    return dataclasses.replace(redaction, pattern=twins[id(redaction.pattern)], hint=hint)


_TWINS: dict[int, re.Pattern[str]] = {}
_UNLOCKED = {id(r): _twin(r, _TWINS) for patterns in _REDACTIONS.values() for r in patterns}  # built once, at import


def _hinted(redactions: tuple[_Redaction, ...], text: str) -> tuple[_Redaction, ...]:
    """The redactions that may match somewhere in `text`, looking for each distinct hint once.

    Called with every text of a body joined by NULs (which no hint contains), so that a body with
    nothing to redact costs one look per hint rather than one per hint and text."""
    present: dict[re.Pattern[str], bool] = {}
    for redaction in redactions:
        if (hint := redaction.hint or redaction.pattern) not in present:
            present[hint] = redaction.start(text) >= 0
    return tuple(r for r in redactions if present[r.hint or r.pattern])


def _redact(texts: list[_Slot], redactions: tuple[_Redaction, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    changed: dict[int, _Arguments] = {}
    for slot in texts:
        text = slot.text
        replaced = 0
        for redaction in _hinted(redactions, text) if len(texts) > 1 else redactions:
            text, n = redaction.apply(text)
            if n:
                counts[redaction.kind] = counts.get(redaction.kind, 0) + n
                replaced += n
        if replaced:
            slot.holder[slot.key] = text
            if slot.arguments is not None:
                changed[id(slot.arguments)] = slot.arguments
    for arguments in changed.values():
        arguments.encode()
    return counts


@dataclass(slots=True)
class _Arguments:
    """A tool call's decoded JSON arguments, written back only when a value in them was redacted."""

    function: dict[str, Any]
    root: list[Any]  # [the decoded value], so that even a bare JSON string has a holder

    def encode(self) -> None:
        self.function["arguments"] = orjson.dumps(self.root[0]).decode()


@dataclass(slots=True)
class _Slot:
    """One text, and where it lives: `holder[key]`."""

    param: str
    holder: Any  # a dict or a list
    key: Any
    text: str
    arguments: _Arguments | None = None


def _texts(body: dict[str, Any]) -> Iterator[_Slot]:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                yield from _message_texts(message)
    for param in ("prompt", "input"):  # completions; embeddings (lists of ints are token ids)
        value = body.get(param)
        if isinstance(value, str):
            yield _Slot(param, body, param, value)
        elif isinstance(value, list):
            yield from (_Slot(param, value, i, item) for i, item in enumerate(value) if isinstance(item, str))


def _message_texts(message: dict[str, Any]) -> Iterator[_Slot]:
    content = message.get("content")
    if isinstance(content, str):
        yield _Slot("messages", message, "content", content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(text := part.get("text"), str):
                yield _Slot("messages", part, "text", text)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield from _argument_texts(function)


def _argument_texts(function: dict[str, Any]) -> Iterator[_Slot]:
    raw = function["arguments"]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:  # not JSON: screened as plain text
        yield _Slot("messages", function, "arguments", raw)
        return
    arguments = _Arguments(function, [value])
    stack: list[Any] = [arguments.root]
    while stack:
        holder = stack.pop()
        for key, item in holder.items() if isinstance(holder, dict) else enumerate(holder):
            if isinstance(item, str):
                yield _Slot("messages", holder, key, item, arguments)
            elif isinstance(item, dict | list):
                stack.append(item)
