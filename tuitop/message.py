"""The wire format of a queued job, as Tuleap writes and reads it.

A message is the JSON object ``{"event_name": TOPIC, "payload": ANY, "_enqueue_ts": FLOAT,
"_queued_total": INT}``, written as PHP's ``json_encode`` does (no spaces, ``/`` escaped as
``\\/``, non-ASCII as ``\\uXXXX``). Any valid JSON is accepted on the way in. A value that is
not a usable message still decodes, with ``problem`` saying why, so the worker can
dead-letter it with that reason instead of crashing.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any

NO_TOPIC = "notopic"
"""Tuleap's topic for a value that is not valid JSON."""


@dataclass(frozen=True)
class Message:
    """A message as taken from the queue. ``raw`` is what its job reads (Tuleap's task
    process, on its stdin): in Redis, the exact stored value (LREM needs it too)."""

    topic: str
    payload: Any
    enqueue_ts: float
    queued_total: int
    raw: bytes
    problem: str | None = None
    """Why this value cannot be run (not JSON, not an object, no topic); None when usable."""
    row_id: bytes | None = None
    """In Tuleap's database queue, the ``async_events`` row's id; None in Redis, where the
    stored value itself is what finds it again."""

    def age(self, now: float | None = None) -> float | None:
        """Seconds since it was first enqueued; None when the producer gave no timestamp."""
        if self.enqueue_ts <= 0:
            return None
        return (time.time() if now is None else now) - self.enqueue_ts


def job_key(message: Message) -> int:
    """A number that tells the job of ``message`` from the few others a worker holds: the
    CRC-32 of its row's id (the database's: rows of one topic and payload, an event
    Tuleap queued twice, write the same stdin) and of its bytes, plus one — exact in a
    double, the pool's and a worker's shared slots, and never 0, which means none. Taken
    for every job: 0.1 us, where a cryptographic hash costs 0.4."""
    return zlib.crc32(message.raw, zlib.crc32(message.row_id or b"")) + 1


def php_json(value: Any) -> bytes:
    """``value`` encoded as PHP's ``json_encode`` would (byte for byte for what tuitop writes)."""
    try:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise ValueError("nested too deep to be written as JSON") from None
    # "/" only ever occurs inside JSON strings, so this escapes exactly what PHP escapes.
    return text.replace("/", "\\/").encode("ascii")


def encode(
    topic: str, payload: Any, *, enqueue_ts: float | None = None, queued_total: int = 0
) -> bytes:
    """A new message for ``topic``, stamped now unless ``enqueue_ts`` is given."""
    return php_json(
        {
            "event_name": topic,
            "payload": payload,
            "_enqueue_ts": time.time() if enqueue_ts is None else enqueue_ts,
            "_queued_total": queued_total,
        }
    )


def decode(raw: bytes) -> Message:
    """Reads a stored value; never raises (an unusable value has ``problem`` set)."""
    try:
        document = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        return Message(NO_TOPIC, "", 0.0, 0, raw, f"not JSON ({error})")
    except RecursionError:
        # Not a ValueError: a front end's bug must not crash whoever reads the message.
        return Message(NO_TOPIC, "", 0.0, 0, raw, "not JSON tuitop can read (nested too deep)")
    if not isinstance(document, dict):
        return Message(
            NO_TOPIC, "", 0.0, 0, raw, f"not a JSON object but {type(document).__name__}"
        )
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(document):
        return Message(NO_TOPIC, "", 0.0, 0, raw, _LONE_SURROGATE)
    enqueue_ts = _number(document.get("_enqueue_ts"), float)
    # Never below 0: a count of -1e9 would retry a billion times instead of three.
    queued_total = max(int(_number(document.get("_queued_total"), int)), 0)
    topic = document.get("event_name")
    payload = document.get("payload", "")
    if not isinstance(topic, str) or not topic:
        return Message(NO_TOPIC, payload, enqueue_ts, queued_total, raw, "no event_name")
    return Message(topic, payload, enqueue_ts, queued_total, raw)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
"""The escape of a UTF-16 surrogate: only a message holding one can hold a lone one."""
_LONE_SURROGATE = "not JSON PHP can read (a lone UTF-16 surrogate escape, as \\ud800)"


def _has_lone_surrogate(document: Any) -> bool:
    """Whether a string of ``document`` holds a surrogate no pair completes (valid JSON,
    refused by PHP's json_decode; UTF-8 cannot encode it)."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return True
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


# NaN and Infinity are not JSON (PHP's json_decode refuses them), and a number too large
# for a double (1e400) reads as one: none could ever be written back, so each is refused
# like any other invalid JSON. One decoder for all (making one costs more than decoding a
# small message).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def with_queued_total(raw: bytes, queued_total: int) -> bytes:
    """The same message with another try count; every other field is kept as it was.
    Raises ValueError for a message decode() finds a problem with."""
    document = _document(raw)
    document["_queued_total"] = queued_total
    return php_json(document)


def with_payload(raw: bytes, payload: Any) -> bytes:
    """The same message with another payload (for a retry of what is left of a job).
    Raises ValueError when it cannot be written (a payload nested too deep, say)."""
    document = _document(raw)
    document["payload"] = payload
    return php_json(document)


def _document(raw: bytes) -> dict[str, Any]:
    try:
        document = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON tuitop can read: {type(error).__name__}") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _number(value: Any, kind: type[float] | type[int]) -> float:
    # PHP's (float)/(int) casts read a missing or odd value as 0; so does tuitop.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        number = float(value)
    except (ValueError, OverflowError):  # an integer too large for a float
        return 0
    # A string may spell what no JSON number can ("nan", "inf"): no time, no count.
    return kind(number) if math.isfinite(number) else 0
