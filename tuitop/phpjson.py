"""JSON as Tuleap's PHP reads and writes it: what its worker writes on a task's stdin.

Tuleap's database worker (``DBPersistentQueue::listen``) reads a row's payload with
``Psl\\Json\\decode`` — PHP's ``json_decode($json, true, 512, JSON_BIGINT_AS_STRING |
JSON_THROW_ON_ERROR)`` — and its task runner (``TaskWorkerProcess::run``) writes
``Psl\\Json\\encode(new WorkerEventContent($topic, $payload))`` — ``json_encode`` with
``JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION |
JSON_THROW_ON_ERROR`` — on the task's stdin. The round trip through PHP's arrays changes
the bytes:

* an object becomes a PHP array: ``{}`` comes out as ``[]``, an object whose keys are
  ``"0"`` … ``"n-1"`` in order as a list, a key spelling an integer (``"7"``, ``"-3"``, not
  ``"07"`` nor ``"-0"``) as that integer; a key given twice keeps its first place and its
  last value;
* an integer beyond 64 bits becomes a string (``JSON_BIGINT_AS_STRING``), ``-0`` is ``0``;
* a number with a fraction or an exponent becomes a double, written in PHP's shortest
  form: ``1.50`` → ``1.5``, ``1e2`` → ``100.0``, ``1e-5`` → ``1.0e-5``, ``1e25`` →
  ``1.0e+25``;
* strings are written with only ``"``, ``\\``, the control characters and U+2028/U+2029
  escaped (``\\u001f`` in lower case), everything else as UTF-8;
* no spaces.

What PHP refuses — a lone UTF-16 surrogate escape, nesting deeper than 512, a number
beyond a double (``1e400`` reads as INF, which ``json_encode`` refuses) — raises
:class:`PhpJsonError` with PHP's own message: Tuleap's worker would die on that row.

:func:`task_input` is the whole of it; ``tests/test_phpjson.py`` holds it against the real
``php`` on a generated corpus.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

MAX_DEPTH = 512
"""PHP's default depth for ``json_decode`` and ``json_encode`` (Psl keeps it)."""
_INT64 = (-(2**63), 2**63 - 1)
_INT64_DIGITS = 19
_INTEGER_KEY = re.compile(r"-?(?:0|[1-9][0-9]*)")
_ENCODE_STRING = json.JSONEncoder(ensure_ascii=False).encode
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""A raw control character (not JSON's white space) PHP's scanner refuses as such."""
_LONE_SURROGATE = "Single unpaired UTF-16 surrogate in unicode escape"
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


class PhpJsonError(ValueError):
    """PHP's ``json_decode`` or ``json_encode`` refuses the value (PHP's message)."""


def task_input(topic: str, payload_json: str) -> bytes:
    """The bytes Tuleap's worker writes on the stdin of the task it runs for a row of
    ``topic`` whose payload column holds ``payload_json``. Raises PhpJsonError when
    PHP refuses to read or write it."""
    payload = _read(payload_json)
    text = '{"event_name":' + _string(topic) + ',"payload":' + _encode(payload, 2) + "}"
    return text.encode("utf-8")


def _read(text: str, decoder: json.JSONDecoder | None = None) -> Any:
    """``text`` read as JSON (Python's reader, in C), refused where PHP's
    ``json_decode`` refuses it. What PHP's arrays make of it — integer keys, integers
    beyond 64 bits as strings — is applied as it is written (:func:`_encode`): a key
    given twice keeps its first place and its last value in both. An integer Python will
    not read (more than 4300 digits) has the text read again with every integer beyond 64
    bits read as its digits, as PHP does whatever their number (one call a number)."""
    if _has_surrogate(text):
        # Bytes that were not UTF-8, read with surrogateescape (an escape is ASCII).
        raise PhpJsonError("Malformed UTF-8 characters, possibly incorrectly encoded")
    try:
        value = (decoder or _DECODER).decode(text)
    except RecursionError:
        raise PhpJsonError("Maximum stack depth exceeded") from None
    except json.JSONDecodeError as error:
        raise PhpJsonError(_first_fault(text, error.pos, error.msg)) from None
    except ValueError as error:
        if decoder is None and "Exceeds the limit" in str(error):
            return _read(text, _LONG_DECODER)
        raise PhpJsonError(f"Syntax error ({error})") from None  # NaN, Infinity
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate_escape(text):
        raise PhpJsonError(_LONE_SURROGATE)
    return value


def _first_fault(text: str, position: int, message: str) -> str:
    """PHP's message for ``text`` that does not read, Python having stopped at
    ``position``: PHP says what its scanner meets first — a lone surrogate escape, a raw
    control character — else a syntax error. (PHP's scanner reads one token ahead of its
    parser: a control character in the token after a syntax error is said first there;
    here, the syntax error.)"""
    ahead = text[: position + 1]
    if _SURROGATE_ESCAPE.search(ahead) and _lone_surrogate_escape(ahead):
        return _LONE_SURROGATE
    if _CONTROL.search(ahead):
        return "Control character error, possibly incorrectly encoded"
    return f"Syntax error ({message} at character {position})"


def _lone_surrogate_escape(text: str) -> bool:
    """Whether a string of the JSON ``text`` holds a UTF-16 surrogate escape that no
    other completes (``\\ud83d\\ude00`` is one character; ``\\ud800`` alone is refused by
    PHP, even in a value a later key replaces). Escapes are read left to right, so an
    escaped backslash before ``u`` is no escape."""
    high_ends_at = -1
    for match in _ESCAPE.finditer(text):
        unit = int(match.group(1), 16) if match.group(1) else -1
        if high_ends_at >= 0:
            if match.start() != high_ends_at or not 0xDC00 <= unit <= 0xDFFF:
                return True
            high_ends_at = -1
        elif 0xD800 <= unit <= 0xDBFF:
            high_ends_at = match.end()
        elif 0xDC00 <= unit <= 0xDFFF:
            return True
    return high_ends_at >= 0


def _php_array(document: dict[str, Any]) -> dict[int | str, Any]:
    """A JSON object as a PHP array holds it: its keys that spell integers are integers."""
    if not any(key[:1].isdigit() or key[:1] == "-" for key in document):
        return document  # type: ignore[return-value]  # no key changes: the same mapping
    return {_key(key): item for key, item in document.items()}


def _key(key: str) -> int | str:
    """A string key as a PHP array holds it: a canonical decimal integer of 64 bits is
    that integer (``ZEND_HANDLE_NUMERIC_STR``)."""
    # No more digits than 64 bits hold (int() refuses past 4300 digits).
    digits = len(key) - key.startswith("-")
    if digits <= _INT64_DIGITS and key != "-0" and _INTEGER_KEY.fullmatch(key):
        number = int(key)
        if _INT64[0] <= number <= _INT64[1]:
            return number
    return key


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _integer(token: str) -> int | str:
    """An integer token as PHP reads it: past 64 bits (19 digits), its digits."""
    if len(token) - token.startswith("-") > _INT64_DIGITS:
        return token
    number = int(token)
    return number if _INT64[0] <= number <= _INT64[1] else token


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_LONG_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_integer)
"""For a payload with an integer Python's reader refuses (:func:`_read`)."""


def _encode(value: Any, depth: int) -> str:
    """``value`` (as :func:`_read` gives it) as PHP's ``json_decode`` then
    ``Psl\\Json\\encode`` writes it, ``depth`` the level of its arrays (PHP refuses an
    array deeper than MAX_DEPTH: reading a payload deeper than 512, writing one of 512
    inside the event). Without recursion: 512 levels are more than Python's stack holds
    with a call or two a level."""
    out: list[str] = []
    # What is left to write, last first: text as it is, or a value and its level.
    todo: list[str | tuple[Any, int]] = [(value, depth)]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        value, level = item
        scalar = _scalar(value)
        if scalar is not None:
            out.append(scalar)
            continue
        if level > MAX_DEPTH:
            raise PhpJsonError("Maximum stack depth exceeded")
        parts: list[str | tuple[Any, int]]
        if isinstance(value, dict):
            value = _php_array(value)
        if isinstance(value, list) or _is_list(value):
            items = value if isinstance(value, list) else list(value.values())
            parts = ["["]
            for index, child in enumerate(items):
                parts += [","] if index else []
                parts.append((child, level + 1))
            parts.append("]")
        else:
            parts = ["{"]
            for index, (key, child) in enumerate(value.items()):
                parts.append(("," if index else "") + _string(str(key)) + ":")
                parts.append((child, level + 1))
            parts.append("}")
        todo.extend(reversed(parts))
    return "".join(out)


def _scalar(value: Any) -> str | None:
    """A value that is not an array as PHP writes it; None for an array."""
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        # Beyond 64 bits, JSON_BIGINT_AS_STRING keeps its digits as a string.
        return str(value) if _INT64[0] <= value <= _INT64[1] else _string(str(value))
    if isinstance(value, float):
        return _double(value)
    return None


def _is_list(array: dict[int | str, Any]) -> bool:
    """Whether PHP writes the array as a JSON list: its keys are 0 … n-1, in order."""
    return all(key == index for index, key in enumerate(array))


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a UTF-16 surrogate (what UTF-8 cannot encode); ASCII, the
    common case, is answered at once."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _string(text: str) -> str:
    """A string as PHP writes it with these flags: Python's own encoder (in C) escapes
    ``"``, ``\\`` and the control characters as PHP does (``\\n``, ``\\u001f`` in lower
    case) and leaves the rest as it is; PHP escapes U+2028 and U+2029 besides."""
    if _has_surrogate(text):
        raise PhpJsonError(_LONE_SURROGATE)
    written = _ENCODE_STRING(text)
    if "\u2028" in text or "\u2029" in text:
        written = written.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return written


def _double(value: float) -> str:
    """A double as PHP writes it with ``serialize_precision = -1`` (the shortest digits
    that read back the same, ``php_gcvt`` with 17 places) and
    ``JSON_PRESERVE_ZERO_FRACTION``."""
    if not math.isfinite(value):
        raise PhpJsonError("Inf and NaN cannot be JSON encoded")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # the value is 0.DIGITS times 10^point
    if point < -3 or point > 17:
        power = point - 1
        mantissa = digits[0] + "." + (digits[1:] or "0")
        return f"{sign}{mantissa}e{'-' if power < 0 else '+'}{abs(power)}"
    if point <= 0:
        return sign + "0." + "0" * -point + digits
    if len(digits) <= point:
        return sign + digits + "0" * (point - len(digits)) + ".0"
    return sign + digits[:point] + "." + digits[point:]
