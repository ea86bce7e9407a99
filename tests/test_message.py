"""The wire format: what Tuleap's PHP writes, tuitop reads, and back."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tuitop.message import NO_TOPIC, decode, encode, php_json, with_payload, with_queued_total


def test_decode_a_tuleap_message() -> None:
    raw = (
        b'{"event_name":"tuleap.tracker.artifact","payload":{"artifact_id":42,'
        b'"url":"https:\\/\\/x\\/y","name":"\\u00e9t\\u00e9"},"_enqueue_ts":1764237600.1234,'
        b'"_queued_total":2}'
    )
    message = decode(raw)
    assert message.problem is None
    assert message.topic == "tuleap.tracker.artifact"
    assert message.payload == {"artifact_id": 42, "url": "https://x/y", "name": "été"}
    assert (message.enqueue_ts, message.queued_total, message.raw) == (1764237600.1234, 2, raw)


@pytest.mark.parametrize("raw", [b"not json", b"{", b"\xff\xfe", b""])
def test_not_json_reads_as_notopic(raw: bytes) -> None:
    message = decode(raw)
    assert (message.topic, message.payload, message.enqueue_ts, message.queued_total) == (
        NO_TOPIC,
        "",
        0.0,
        0,
    )
    assert message.problem is not None and "not JSON" in message.problem


def test_missing_fields_read_as_zero() -> None:
    message = decode(b'{"event_name":"t","payload":[1]}')
    assert (message.enqueue_ts, message.queued_total, message.problem) == (0.0, 0, None)
    assert message.age() is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"[1,2]", "not a JSON object but list"),
        (b'"text"', "not a JSON object but str"),
        (b'{"payload":1}', "no event_name"),
        (b'{"event_name":5}', "no event_name"),
    ],
)
def test_unusable_values_say_why(raw: bytes, problem: str) -> None:
    assert decode(raw).problem == problem


def test_odd_counters_read_as_php_casts_would() -> None:
    message = decode(b'{"event_name":"t","_enqueue_ts":"12.5","_queued_total":"2"}')
    assert (message.enqueue_ts, message.queued_total) == (12.5, 2)
    message = decode(b'{"event_name":"t","_enqueue_ts":true,"_queued_total":[1]}')
    assert (message.enqueue_ts, message.queued_total) == (0.0, 0)


def test_encode_round_trip() -> None:
    raw = encode("a/b", {"x": "é/€"}, enqueue_ts=10.5, queued_total=1)
    assert raw == (
        b'{"event_name":"a\\/b","payload":{"x":"\\u00e9\\/\\u20ac"},'
        b'"_enqueue_ts":10.5,"_queued_total":1}'
    )
    message = decode(raw)
    assert (message.topic, message.payload, message.queued_total) == ("a/b", {"x": "é/€"}, 1)


def test_rewrites_keep_every_other_field() -> None:
    raw = b'{"event_name":"t","payload":{"a":1},"_enqueue_ts":3.25,"_queued_total":0,"extra":"k"}'
    again = json.loads(with_queued_total(raw, 2))
    assert again == {
        "event_name": "t",
        "payload": {"a": 1},
        "_enqueue_ts": 3.25,
        "_queued_total": 2,
        "extra": "k",
    }
    assert json.loads(with_payload(raw, {"b": 2}))["payload"] == {"b": 2}


@pytest.mark.skipif(shutil.which("php") is None, reason="needs php (installed by .ci/run)")
def test_encoding_matches_php_json_encode_byte_for_byte() -> None:
    value = {
        "event_name": "tuleap.tracker.artifact",
        "payload": {"url": "https://x/y", "name": "été €", "ids": [1, 2], "ok": True, "n": None},
        "_enqueue_ts": 1764237600.1234,
        "_queued_total": 0,
    }
    php = subprocess.run(
        ["php", "-r", "echo json_encode(json_decode(stream_get_contents(STDIN), true));"],
        input=json.dumps(value).encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert php_json(value) == php


DEEP = b'{"event_name":"tuleap.x","payload":' + b"[" * 5000 + b"]" * 5000 + b"}"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (DEEP, "nested too deep"),
        (b'{"event_name":"tuleap.x","payload":1e400}', "out of range"),
        (b'{"event_name":"tuleap.x","payload":-1E999}', "out of range"),
        (b'{"event_name":"tuleap.x","payload":"\xff\xfe"}', "not JSON"),
        (b'"just a string"', "not a JSON object"),
        (b"", "not JSON"),
    ],
)
def test_hostile_values_never_raise_and_say_why(raw: bytes, problem: str) -> None:
    message = decode(raw)
    assert message.problem is not None and problem in message.problem
    with pytest.raises(ValueError):
        with_queued_total(raw, 1)


def test_a_payload_too_deep_to_write_is_a_value_error() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deep"):
        encode("tuleap.x", deep)
