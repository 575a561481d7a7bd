"""The contract's JSON rules (v1.1, CONTRACT.md 6.5): one strict parser for every JSON input.

Config files, ``config/set`` writes and requests are parsed with ``loads_strict``, which accepts
exactly RFC 8259 JSON in UTF-8 and raises ``StrictJsonError`` (a ``ValueError``) for:

- bytes that are not UTF-8;
- text that is not JSON (the stdlib's message, with line and column);
- ``NaN``, ``Infinity`` and ``-Infinity``, which Python's ``json`` accepts by default;
- numbers that overflow a double (``1e400``, ``-1e400``);
- integers longer than 4,300 digits (``INTEGER_MAX_DIGITS``, Python's own limit for ``int()``);
- lone surrogate escapes (``"\\ud800"``), in values and in object keys; an escaped surrogate
  *pair* (``"\\ud83d\\ude00"``) is one valid character and passes;
- nesting deeper than the interpreter's recursion limit allows.

A UTF-8 byte order mark at the start is ignored (RFC 8259 8.1 allows parsers to). Numbers that
underflow (``1e-400``) parse as ``0.0``. Duplicate keys keep the last value, as in ``json``.

The checks cost little on the hot path (10,000 config files at agent start): the stdlib's C
scanner does the parsing; hooks run only for float literals and the constants; the surrogate
check runs only when the text contains a ``\\u`` escape. ``bench/bench_json_rules.py`` measures
the ratio against plain ``json.loads``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

INTEGER_MAX_DIGITS = 4300
"""Longest integer literal accepted (digits, sign excluded): Python's default ``int()`` limit."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = "\ufeff"


class StrictJsonError(ValueError):
    """Input that is not RFC 8259 JSON; ``message`` says why (and where, when known)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Rejected(ValueError):
    """Raised from inside the scanner's hooks; turned into a located StrictJsonError."""

    def __init__(self, reason: str, token: Callable[[str], bool]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token = token  # recognises the offending token, to find its line and column


def _reject_constant(name: str) -> NoReturn:
    raise _Rejected(
        f"{name} is not JSON (RFC 8259 has no NaN or Infinity)", lambda token: token == name
    )


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Rejected(f"number {_shorten(text)} overflows a double", lambda t: t == text)
    return value


def _integer_too_long(token: str) -> bool:
    return token.lstrip("-").isdigit() and len(token.lstrip("-")) > INTEGER_MAX_DIGITS


def _parse_int(text: str) -> int:
    # only when the interpreter's limit (PYTHONINTMAXSTRDIGITS) is not the contract's
    if len(text.lstrip("-")) > INTEGER_MAX_DIGITS:
        raise _Rejected(_INTEGER_TOO_LONG, _integer_too_long)
    return int(text)


_INTEGER_TOO_LONG = f"integer longer than {INTEGER_MAX_DIGITS:,} digits"

_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_reject_constant)
_DECODER_OWN_INT_LIMIT = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_reject_constant, parse_int=_parse_int
)


def loads_strict(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON text under the contract's rules; raise ``StrictJsonError`` otherwise."""
    if isinstance(data, str):
        text = data
        raw_surrogate = _SURROGATE.search(text)
        if raw_surrogate is not None:
            raise StrictJsonError(
                f"{_where(text, raw_surrogate.start())}: unpaired surrogate "
                f"U+{ord(raw_surrogate.group()):04X} (not valid Unicode)"
            )
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJsonError(
                f"not UTF-8: invalid byte {bytes(data)[exc.start]:#04x} at offset {exc.start}"
            ) from None
    if text.startswith(_BOM):
        text = text[1:]
    own_limit = sys.get_int_max_str_digits() == INTEGER_MAX_DIGITS
    decoder = _DECODER if own_limit else _DECODER_OWN_INT_LIMIT
    try:
        document = decoder.decode(text)
    except _Rejected as exc:
        raise StrictJsonError(_located(text, exc.token, exc.reason)) from None
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise StrictJsonError("nested too deeply") from None
    except ValueError as exc:  # int(): "Exceeds the limit (4300 digits) for integer string ..."
        if "digits" not in str(exc):
            raise
        raise StrictJsonError(_located(text, _integer_too_long, _INTEGER_TOO_LONG)) from None
    if "\\u" in text:
        _check_surrogates(text)
    return document


def _check_surrogates(text: str) -> None:
    """Refuse a lone surrogate escape in ``text`` (which parsed, so every ``\\`` is an escape)."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return  # the common case: \u00fc and friends
    lone = _UP_TO_LONE_SURROGATE.match(text)
    if lone is None:
        return  # every surrogate escape is half of a pair
    position = lone.end() - 2
    escape = text[position : position + 6]
    raise StrictJsonError(
        f"{_where(text, position)}: lone surrogate escape {escape} "
        "(not valid Unicode; only a high+low pair is)"
    )


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Consumes the text escape by escape (so "\\\\ud800" is a backslash, then plain text) and stops
# at the first \u that is neither a non-surrogate nor a high+low pair. Possessive: no
# backtracking can split a pair.
_UP_TO_LONE_SURROGATE = re.compile(
    r"(?:[^\\]++|\\[^u]|\\u(?:[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(?![dD][89a-fA-F])[0-9a-fA-F]{4}))*+\\u",
    re.S,
)


# -- error positions (only on the error path) --------------------------------------------------

# A string literal, or a bare token between structural characters.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s\[\]{}:,"]+', re.S)


def _located(text: str, is_token: Callable[[str], bool], reason: str) -> str:
    for match in _TOKENS.finditer(text):
        token = match.group()
        if not token.startswith('"') and is_token(token):
            return f"{_where(text, match.start())}: {reason}"
    return reason


def _where(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    return f"line {line} column {column}"


def _shorten(token: str) -> str:
    return token if len(token) <= 40 else f"{token[:20]}...{token[-10:]}"
