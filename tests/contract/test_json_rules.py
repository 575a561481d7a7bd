"""Contract 6.5: ``loads_strict`` takes exactly RFC 8259 JSON and names what is wrong otherwise."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_contracts.json_rules import INTEGER_MAX_DIGITS, StrictJsonError, loads_strict

# Everything json.dumps can produce from finite data: any text (astral characters included,
# no lone surrogates: those are not Unicode text), any int, any finite float, at any nesting.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
json_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**200), max_value=10**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=25,
)


@settings(deadline=None, max_examples=300)
@given(data=json_data, ensure_ascii=st.booleans(), indent=st.none() | st.just(2))
def test_anything_json_dumps_writes_from_finite_data_parses_equal(
    data: Any, ensure_ascii: bool, indent: int | None
) -> None:
    text = json.dumps(data, ensure_ascii=ensure_ascii, indent=indent)
    assert json.loads(text) == loads_strict(text)
    assert json.loads(text) == loads_strict(text.encode("utf-8"))


@pytest.mark.parametrize(
    "text",
    [
        '"\\ud83d\\ude00"',  # an escaped surrogate pair is one character
        '{"\\ud83d\\ude00": "\\uD83D\\uDE00"}',  # in keys, upper-case hex
        '"\\\\ud800"',  # an escaped backslash followed by plain "ud800"
        '"\\\\\\ud83d\\ude00"',  # a backslash, then a pair
        '"\\u00fc\\u20ac"',  # escapes that are not surrogates
        "1e-400",  # underflow is 0.0, not an overflow
        "1.7976931348623157e308",  # the largest double
        "-" + "9" * INTEGER_MAX_DIGITS,  # exactly 4,300 digits
        '\ufeff{"bom": true}',  # a leading BOM is ignored (RFC 8259 8.1)
        '{"a": 1, "a": 2}',  # duplicate keys: the last one wins, as in json.loads
    ],
)
def test_legal_edge_cases_pass(text: str) -> None:
    expected = json.loads(text.removeprefix("\ufeff"))
    assert expected == loads_strict(text)
    assert expected == loads_strict(text.encode("utf-8"))


def test_valid_pair_becomes_one_character() -> None:
    assert "a😀b" == loads_strict('"a\\ud83d\\ude00b"')
    assert {"😀": 1} == loads_strict(b'{"\\ud83d\\ude00": 1}')


BAD: list[tuple[str, bytes | str, str]] = [
    ("nan", b'{"a": NaN}', "line 1 column 7: NaN is not JSON"),
    ("infinity", b'{"a":\n  Infinity}', "line 2 column 3: Infinity is not JSON"),
    ("minus-infinity", b"[1, -Infinity]", "line 1 column 5: -Infinity is not JSON"),
    ("overflow", b"[1e400]", "line 1 column 2: number 1e400 overflows a double"),
    ("negative-overflow", b'{"x": -1e400}', "line 1 column 7: number -1e400 overflows a double"),
    ("overflow-fraction", b"[1.5e309]", "number 1.5e309 overflows a double"),
    (
        "long-int",
        ("[" + "9" * (INTEGER_MAX_DIGITS + 1) + "]").encode(),
        "line 1 column 2: integer longer than 4,300 digits",
    ),
    (
        "long-negative-int",
        ('{"n":\n-' + "1" * (INTEGER_MAX_DIGITS + 1) + "}").encode(),
        "line 2 column 1: integer longer than 4,300 digits",
    ),
    ("lone-high", b'"\\ud800"', "line 1 column 2: lone surrogate escape \\ud800"),
    ("lone-low", b'["ok", "\\udc00"]', "line 1 column 9: lone surrogate escape \\udc00"),
    ("lone-in-key", b'{"k\\uDBFF": 1}', "line 1 column 4: lone surrogate escape \\uDBFF"),
    ("high-then-text", b'"\\ud83d x"', "lone surrogate escape \\ud83d"),
    ("reversed-pair", b'"\\ude00\\ud83d"', "line 1 column 2: lone surrogate escape \\ude00"),
    ("high-high-low", b'"\\ud83d\\ud83d\\ude00"', "line 1 column 2: lone surrogate escape"),
    ("after-backslash", b'"\\\\\\ud800"', "line 1 column 4: lone surrogate escape \\ud800"),
    ("raw-surrogate-in-str", '"\ud800"', "line 1 column 2: unpaired surrogate U+D800"),
    ("not-utf8", b'{"a": "\xff"}', "not UTF-8: invalid byte 0xff at offset 7"),
    ("encoded-surrogate", b'"\xed\xa0\x80"', "not UTF-8"),
    ("syntax", b'{"a": 1,}', "line 1 column 9: Expecting property name enclosed in double quotes"),
    ("empty", b"", "line 1 column 1: Expecting value"),
    ("trailing-data", b"{} {}", "line 1 column 4: Extra data"),
    ("too-deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("too-deep-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD, ids=[name for name, _, _ in BAD])
def test_bad_input_raises_a_clear_error(name: str, data: bytes | str, message: str) -> None:
    with pytest.raises(StrictJsonError) as caught:
        loads_strict(data)
    assert message in caught.value.message
    assert caught.value.message == str(caught.value)
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError keep working


def test_a_huge_number_is_shortened_in_the_message() -> None:
    with pytest.raises(StrictJsonError) as caught:
        loads_strict("1" * 400 + ".0e400")
    assert len(caught.value.message) < 120


@settings(deadline=None)
@given(
    data=json_data,
    bad=st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"\\udfff"']),
)
def test_a_bad_value_anywhere_is_refused(data: Any, bad: str) -> None:
    text = json.dumps({"ok": data, "bad": [0]}).replace("[0]", f"[{bad}]")
    with pytest.raises(StrictJsonError):
        loads_strict(text)


def test_the_interpreter_limit_is_not_the_contract() -> None:
    """PYTHONINTMAXSTRDIGITS=0 (no limit) must not let a 4,301-digit integer through."""
    long_int = "7" * (INTEGER_MAX_DIGITS + 1)
    saved = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(0)
        with pytest.raises(StrictJsonError, match="integer longer than 4,300 digits"):
            loads_strict(f"[{long_int}]")
        assert 10**4299 == loads_strict("1" + "0" * 4299)
        assert math.isclose(1.5, loads_strict("1.5"))
    finally:
        sys.set_int_max_str_digits(saved)
