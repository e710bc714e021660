"""What a JSON request body or socket message may be (spec §2): one parser for both, and the base body schema."""

from __future__ import annotations

import json
import math
from typing import Any, Final, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load

MAX_DEPTH: Final = 32  # levels of nested arrays/objects; the app's deepest body has 2
NUL_MESSAGE: Final = "must not contain NUL characters"
BOOL_MESSAGE: Final = "Not a valid boolean (true or false)."


class InvalidJSON(ValueError):
    """Not JSON the server accepts: malformed, nested too deep, NaN/Infinity, a non-finite number, a lone
    surrogate (no text: it could be neither stored nor sent back)."""


def _no_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309 parses as inf; int(inf) later raises OverflowError far from here
        raise InvalidJSON("number out of range")
    return value


def parse_json(raw: str | bytes) -> Any:
    """The decoded value, or InvalidJSON. Never RecursionError or OverflowError, whatever the input."""
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:  # the C decoder recurses per level: ~1000 levels are 2 KB of input
        raise InvalidJSON("nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, and ints over Python's 4300-digit limit
        raise InvalidJSON(str(exc)) from None
    _check_tree(data)
    return data


def _check_tree(data: Any) -> None:
    """Depth and lone surrogates, walked without recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise InvalidJSON("nested too deeply")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for key, item in items:
                if key is not None:
                    _check_text(key)
                stack.append((item, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJSON("lone surrogate in a string") from None


class BodySchema(Schema):
    """Base of every request body schema (spec §2): unknown fields are dropped (an app newer than the server
    keeps working; nothing unknown is ever stored); known fields are strict — booleans only true/false (not
    "yes" or 1), no NUL in any text. Numbers get their bounds from each field's Range."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def _strict_known_fields(self, data: Any, **_kwargs: Any) -> Any:
        if not isinstance(data, Mapping):
            return data  # marshmallow answers "Invalid input type"
        errors: dict[str, list[str]] = {}
        for name, field in self.load_fields.items():
            key = field.data_key or name
            if key in data:
                problem = _strictness_problem(field, data[key])
                if problem:
                    errors[key] = [problem]
        if errors:
            raise ValidationError(errors)
        return data


def _strictness_problem(field: fields.Field, value: Any) -> str | None:
    if value is None:
        return None  # allow_none decides
    if isinstance(field, fields.Boolean) and not isinstance(value, bool):
        return BOOL_MESSAGE
    if isinstance(field, fields.String) and isinstance(value, str) and "\x00" in value:
        return NUL_MESSAGE
    if isinstance(field, fields.List) and isinstance(value, list):
        for item in value:
            problem = _strictness_problem(field.inner, item)
            if problem:
                return problem
    return None
