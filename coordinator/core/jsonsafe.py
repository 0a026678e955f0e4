"""JSON that the transaction log can hold: what the wire allows but Postgres (or a later
reader) cannot is refused at the edge, and participant replies that fail the same test are
kept as text. Pure: no I/O."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from coordinator.core.errors import InvalidInput

MAX_JSON_DEPTH = 32


class UnreadableJson(ValueError):
    """Bytes that are not one JSON document (the message says why)."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# orjson reads an integer beyond 64 bits as a float, silently: text with such long digit
# runs goes to the standard library, which keeps every integer exact.
_LONG_DIGITS = re.compile(rb"[0-9]{19,}")


def loads(raw: bytes | str) -> Any:
    """JSON to Python, fast where that is exact."""
    data = raw.encode() if isinstance(raw, str) else raw
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the standard library says what is wrong, or reads what orjson would not
    return json.loads(data)


def dumps(value: Any) -> str:
    """Python to JSON text, fast where it can be (orjson refuses integers beyond 64 bits).
    NaN and Infinity are refused (ValueError): JSON has no words for them, and orjson would
    quietly write null instead."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        return json.dumps(value, allow_nan=False)
    if b"null" in text and _has_non_finite(value):
        raise ValueError("NaN and Infinity cannot be written as JSON")
    return text.decode()


def _has_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def parse(raw: bytes | str) -> Any:
    """Parse JSON without NaN/Infinity; RecursionError and bad syntax become UnreadableJson."""
    data = raw.encode() if isinstance(raw, str) else raw
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)  # refuses NaN and Infinity too
        except orjson.JSONDecodeError:
            pass  # let the standard library say precisely what is wrong
    try:
        return json.loads(data, parse_constant=_no_constants)
    except RecursionError as exc:
        raise UnreadableJson("nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise UnreadableJson(str(exc)) from exc


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 store can hold.
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _number_problem(value: int | float) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else "number out of range"
    try:
        float(value)
    except OverflowError:
        return "number beyond the range of a double"
    return None


def check_storable(data: Any) -> None:
    """Refuse what JSON allows but the log cannot hold: NUL characters, lone surrogates,
    numbers beyond a double, absurd nesting. Iterative, so hostile depth cannot exhaust
    the stack. Raises InvalidInput naming the path of the first bad value."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        where = path or "(body)"
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
        problem: str | None = None
        if isinstance(value, str):
            problem = _text_problem(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            problem = _number_problem(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                key_problem = _text_problem(key)
                if key_problem is not None:
                    raise InvalidInput(f"{where}: a key {key_problem}")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))
        if problem is not None:
            raise InvalidInput(f"{where}: {problem}")


def printable(text: str) -> str:
    """Text as the log can store it, whatever bytes a participant sent."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def storable_or_text(raw: bytes) -> Any:
    """A participant's reply as the log and the API can carry it: the parsed JSON when it
    passes check_storable, else the reply as (printable) text; None for an empty body."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        value = parse(text)
        check_storable(value)
    except (UnreadableJson, InvalidInput):
        return printable(text)
    return value
