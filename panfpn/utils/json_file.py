"""The one JSON file loader: every problem is one error type naming the file and the problem.

Callers with an error type of their own map it in one line
(``except JSONFileError as e: raise PQInputError(str(e)) from None``).
"""

from __future__ import annotations

import json
import os
from typing import Any

_JSON_TYPES = ((dict, "object"), (list, "array"), (str, "string"), (bool, "boolean"),
               (int, "number"), (float, "number"), (type(None), "null"))


class JSONFileError(ValueError):
    """A JSON file is missing, a directory, unreadable, not valid JSON or not of the expected
    top-level type. The message names the file and the problem; ``path`` and ``reason`` hold them."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.path = os.fspath(path) if path is not None else None
        self.reason = reason if reason is not None else message


class JSONFileNotFoundError(JSONFileError, FileNotFoundError):
    """The file does not exist (also a FileNotFoundError, as ``open`` would raise)."""


def json_type_name(value: object) -> str:
    """JSON's name of a parsed value's type: object, array, string, number, boolean or null."""
    return next(name for kind, name in _JSON_TYPES if isinstance(value, kind))


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise JSONFileNotFoundError(f"{what} not found: {path}", path=path, reason="not found") from None
    except IsADirectoryError:
        raise JSONFileError(f"{what} {path} is a directory, not a file", path=path,
                            reason="is a directory") from None
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
        raise JSONFileError(f"{what} {path} {reason}", path=path, reason=reason) from None


def load_json(path: str | os.PathLike, *, what: str = "JSON file",
              expect: type | None = None) -> Any:
    """The parsed contents of the JSON file ``path``.

    ``what`` names the file in messages ("ground-truth JSON", "annotation file"); ``expect``
    (``dict`` or ``list``) is the required top-level type.

    Raises:
        JSONFileNotFoundError: no such file (a FileNotFoundError too).
        JSONFileError: a directory, unreadable, not UTF-8 or not valid JSON (line and column),
            or a top-level value of another type than ``expect``.
    """
    path = os.fspath(path)
    raw = _read_bytes(path, what)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        reason = f"is not valid JSON: {err}"  # the message ends with the line and column
    except UnicodeDecodeError as err:
        reason = f"is not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})"
    else:
        if expect is None or isinstance(data, expect):
            return data
        reason = f"must hold a JSON {json_type_name(expect())}, got {json_type_name(data)}"
    raise JSONFileError(f"{what} {path} {reason}", path=path, reason=reason)
