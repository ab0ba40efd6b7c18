"""One-line messages for pydantic validation errors, written the way a TOML file names its keys.

``servers[0].port: must be at least 1 (got 0)``: the key path as TOML spells it,
what is wrong in words, and the offending value unless the key is a secret.
Knows no schema: :mod:`language_pipes.config` passes its own key names.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Sequence
from typing import Any

from pydantic_core import ErrorDetails

_PROBLEMS: dict[str, str] = {
    "missing": "required key is missing",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "finite_number": "must be a finite number",
}
_NO_ECHO = frozenset({"missing", "extra_forbidden", "environment"})


def _format_location(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe_value(value: Any) -> str:
    """A short TOML-looking rendering of an offending value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return str(value)


def describe_problem(
    error: ErrorDetails,
    top_level_keys: Collection[str],
    all_keys: Sequence[str],
    secret_keys: Collection[str],
) -> str:
    """``key.path: problem (got value)`` for one pydantic error, without echoing a secret key's value."""
    kind = error["type"]
    location = tuple(error["loc"])
    context = error.get("ctx", {})
    if kind == "extra_forbidden":
        unknown = str(location[-1])
        if len(location) > 1 and unknown in top_level_keys:
            # TOML puts every key after a [[table]] header into that table.
            hint = " (a top-level key: move it above the first [table] or [[table]] header)"
        else:
            close = difflib.get_close_matches(unknown, all_keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close and close[0] != unknown else ""
        parent = _format_location(location[:-1])
        return f"{parent + ': ' if parent else ''}unknown key '{unknown}'{hint}"
    if kind in _PROBLEMS:
        problem = _PROBLEMS[kind]
    elif kind == "greater_than_equal":
        problem = f"must be at least {context['ge']}"
    elif kind == "greater_than":
        problem = f"must be greater than {context['gt']}"
    elif kind == "less_than_equal":
        problem = f"must be at most {context['le']}"
    elif kind == "literal_error":
        problem = f"must be one of {context['expected']}"
    else:
        problem = error["msg"]
    secret = any(part in secret_keys for part in location)
    if kind not in _NO_ECHO and not secret:
        problem += f" (got {_describe_value(error['input'])})"
    key = _format_location(location)
    return " ".join(f"{key + ': ' if key else ''}{problem}".split())
