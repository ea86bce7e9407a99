"""The wire format of a queued job, as Tuleap writes and reads it.

A message is the JSON object ``{"event_name": TOPIC, "payload": ANY, "_enqueue_ts": FLOAT,
"_queued_total": INT}``, written as PHP's ``json_encode`` does (no spaces, ``/`` escaped as
``\\/``, non-ASCII as ``\\uXXXX``). Any valid JSON is accepted on the way in. A value that is
not a usable message still decodes, with ``problem`` saying why, so the worker can
dead-letter it with that reason instead of crashing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

NO_TOPIC = "notopic"
"""Tuleap's topic for a value that is not valid JSON."""


@dataclass(frozen=True)
class Message:
    """A message as taken from Redis. ``raw`` is the exact stored value (LREM needs it)."""

    topic: str
    payload: Any
    enqueue_ts: float
    queued_total: int
    raw: bytes
    problem: str | None = None
    """Why this value cannot be run (not JSON, not an object, no topic); None when usable."""

    def age(self, now: float | None = None) -> float | None:
        """Seconds since it was first enqueued; None when the producer gave no timestamp."""
        if self.enqueue_ts <= 0:
            return None
        return (time.time() if now is None else now) - self.enqueue_ts


def php_json(value: Any) -> bytes:
    """``value`` encoded as PHP's ``json_encode`` would (byte for byte for what tuitop writes)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
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
    if not isinstance(document, dict):
        return Message(
            NO_TOPIC, "", 0.0, 0, raw, f"not a JSON object but {type(document).__name__}"
        )
    enqueue_ts = _number(document.get("_enqueue_ts"), float)
    queued_total = int(_number(document.get("_queued_total"), int))
    topic = document.get("event_name")
    payload = document.get("payload", "")
    if not isinstance(topic, str) or not topic:
        return Message(NO_TOPIC, payload, enqueue_ts, queued_total, raw, "no event_name")
    return Message(topic, payload, enqueue_ts, queued_total, raw)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# NaN and Infinity are not JSON (PHP's json_decode refuses them) and could never be written
# back: refused like any other invalid JSON. One decoder for all (making one costs more
# than decoding a small message).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def with_queued_total(raw: bytes, queued_total: int) -> bytes:
    """The same message with another try count; every other field is kept as it was."""
    document = json.loads(raw)
    document["_queued_total"] = queued_total
    return php_json(document)


def with_payload(raw: bytes, payload: Any) -> bytes:
    """The same message with another payload (for a retry of what is left of a job)."""
    document = json.loads(raw)
    document["payload"] = payload
    return php_json(document)


def _number(value: Any, kind: type[float] | type[int]) -> float:
    # PHP's (float)/(int) casts read a missing or odd value as 0; so does tuitop.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return kind(float(value))
    except (ValueError, OverflowError):
        return 0
