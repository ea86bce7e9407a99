"""What Tuleap's worker writes on a task's stdin (:mod:`tuitop.phpjson`), against real ``php``.

The oracle is Tuleap's own code path in PHP: ``Psl\\Json\\decode`` of the row's payload
(``json_decode($json, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR)``), then
``Psl\\Json\\encode`` of a ``WorkerEventContent`` (``json_encode`` with
``JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION |
JSON_THROW_ON_ERROR``), run by one ``php`` over a corpus of payload texts: hand-picked
ones, and thousands generated from a seed (objects, empty ones, numeric and odd keys,
keys given twice, big and odd numbers in every spelling, escapes, U+2028/2029, surrogate
pairs and lone ones, deep nesting, spaces). For each, tuitop must write PHP's bytes, or
refuse what PHP refuses with PHP's message.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.php_oracle import PHP, PHP_FLAGS
from tuitop.phpjson import PhpJsonError, task_input

pytestmark = pytest.mark.skipif(shutil.which("php") is None, reason="needs the php CLI")

_ORACLE = r"""
final readonly class WorkerEventContent
{
    public function __construct(public string $event_name, public mixed $payload) {}
}
foreach (file($argv[1], FILE_IGNORE_NEW_LINES) as $line) {
    [$topic, $payload] = array_map('base64_decode', explode(' ', $line));
    try {
        $value = json_decode($payload, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR);
        $out = json_encode(
            new WorkerEventContent($topic, $value),
            JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION
                | JSON_THROW_ON_ERROR
        );
        echo 'ok ', base64_encode($out), "\n";
    } catch (JsonException $e) {
        echo 'err ', base64_encode($e->getMessage()), "\n";
    }
}
"""

HAND_PICKED = [
    "{}",
    "[]",
    '{"0":"a","1":"b"}',
    '{"1":"b","0":"a"}',
    '{"0":"a","2":"b"}',
    '{"-0":1,"01":2,"-1":3,"":4," 1":5,"1 ":6,"+1":7}',
    '{"9223372036854775807":1,"9223372036854775808":2,"-9223372036854775808":3,'
    '"-9223372036854775809":4}',
    '{"a":1,"b":2,"a":3}',
    '{"0":"x","0":"y"}',
    '{"artifact_id": 12, "changeset_id": 345}',
    "1.50",
    "1e2",
    "1E2",
    "1e+2",
    "-0",
    "-0.0",
    "0e0",
    "0.0001",
    "0.00001",
    "1e16",
    "1e17",
    "123456789012345678",
    "12345678901234567890",
    "-12345678901234567890",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "1e308",
    "1e309",
    "-1e400",
    "5e-324",
    "1e-400",
    "0.1",
    "0.30000000000000004",
    "1.7976931348623157e308",
    "2.5e-8",
    "100.0",
    "3.0e0",
    '"\\u2028\\u2029"',
    '"\u2028\u2029"',
    '"\\ud83d\\ude00"',
    '"\U0001f600"',
    '"\\ud800"',
    '"\\udc00x"',
    '"\\ud83d\\u0041"',
    '"\\/ / \\\\ \\" \\b \\f \\n \\r \\t \\u0000 \\u001f \\u007f \\u0080 é"',
    '"\x7f"',
    '" a\\u00e9b "',
    " \t\n\r[ 1 , 2 ]\r\n",
    "true",
    "false",
    "null",
    '""',
    "[[[[]]]]",
    '{"a":{"b":{}}}',
    '[{"0":1},{"1":1},{}]',
    "[1,]",
    "{'a':1}",
    "NaN",
    "Infinity",
    "01",
    "",
    "[" * 509 + "]" * 509,
    "[" * 510 + "]" * 510,
    "[" * 511 + "]" * 511,
    "[" * 512 + "]" * 512,
    "[" * 513 + "]" * 513,
    '{"a":' * 511 + "1" + "}" * 511,
    '{"a":' * 512 + "1" + "}" * 512,
]


def php_task_inputs(cases: list[tuple[str, str]], tmp_path: Path) -> list[tuple[bool, bytes]]:
    """For each (topic, payload text): whether PHP wrote it, and what (or its error)."""
    listing = tmp_path / "cases.txt"
    listing.write_text(
        "".join(
            base64.b64encode(topic.encode("utf-8", "surrogatepass")).decode()
            + " "
            + base64.b64encode(payload.encode("utf-8", "surrogatepass")).decode()
            + "\n"
            for topic, payload in cases
        )
    )
    result = subprocess.run(
        [PHP, *PHP_FLAGS, "-r", _ORACLE, "--", str(listing)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(cases), result.stderr.decode()
    answers = []
    for line in lines:
        status, data = line.split(" ", 1)
        answers.append((status == "ok", base64.b64decode(data)))
    return answers


def tuitop_task_input(topic: str, payload: str) -> tuple[bool, bytes]:
    try:
        return True, task_input(topic, payload)
    except PhpJsonError as error:
        return False, str(error).encode()


def assert_like_php(cases: list[tuple[str, str]], tmp_path: Path) -> None:
    mismatches = []
    for (topic, payload), (php_ok, php_out) in zip(
        cases, php_task_inputs(cases, tmp_path), strict=True
    ):
        ok, out = tuitop_task_input(topic, payload)
        same = ok == php_ok and (out == php_out if ok else out.startswith(php_out))
        if not same:
            mismatches.append((payload[:200], php_ok, php_out[:300], ok, out[:300]))
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ, first: {mismatches[:5]}"


def test_hand_picked_payloads_as_php_writes_them(tmp_path: Path) -> None:
    assert_like_php([("tuleap.tracker.artifact", payload) for payload in HAND_PICKED], tmp_path)


def test_generated_payloads_as_php_writes_them(tmp_path: Path) -> None:
    generator = random.Random(20261207)
    cases = [(_topic(generator), _value(generator, 0)) for _ in range(3000)]
    assert_like_php(cases, tmp_path)


def test_tuleap_pushed_payload_reaches_the_task_as_tuleap_writes_it() -> None:
    """The issue's example: a payload with an empty object, numeric keys and a 20-digit
    integer (as MySQL hands a JSON column back: spaces after ':' and ',')."""
    row = '{"ids": {"0": 7, "1": 8}, "extra": {}, "big": 12345678901234567890, "ratio": 1.50}'
    assert task_input("tuleap.fts.index-item", row) == (
        b'{"event_name":"tuleap.fts.index-item","payload":'
        b'{"ids":[7,8],"extra":[],"big":"12345678901234567890","ratio":1.5}}'
    )


# --- the generator ----------------------------------------------------------------------

_TOPICS = ["tuleap.tracker.artifact", "tuleap.git.repository-change", "a/b", "é\u2028", "\x01"]
_KEYS = ["0", "1", "2", "-1", "-0", "01", "", "a", "id", "9223372036854775808", "é", "\u2029"]
_NUMBERS = [
    "0", "-0", "7", "-7", "42", "1.0", "1.50", "-2.25", "1e2", "1E-2", "1e+2", "2.5e-8",
    "0.0001", "0.00001", "1e16", "1e17", "1e21", "1e22", "123456789.123456789",
    "9007199254740993", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "12345678901234567890",
    "1e308", "1e309", "5e-324", "1e-400", "0.1", "3.14159", "6.02214076e23",
]  # fmt: skip
_CHARS = [
    "a", "Z", " ", "/", "\\\\", '\\"', "\\/", "\\n", "\\t", "\\b", "\\f", "\\r", "\\u0000",
    "\\u001f", "\\u007f", "\x7f", "é", "\\u00e9", "€", "\U0001f600", "\\ud83d\\ude00",
    "\u2028", "\\u2028", "\u2029", "\\u2029", "\\ud800", "\\udfff", "\\uD834\\uDD1E",
]  # fmt: skip
_SPACES = ["", "", "", " ", "\n", "\t", " \r\n "]


def _topic(generator: random.Random) -> str:
    return generator.choice(_TOPICS)


def _string(generator: random.Random) -> str:
    return '"' + "".join(generator.choice(_CHARS) for _ in range(generator.randrange(6))) + '"'


def _value(generator: random.Random, depth: int) -> str:
    roll = generator.random()
    space = generator.choice(_SPACES)
    if depth > 4 or roll < 0.35:
        kind = generator.random()
        if kind < 0.45:
            return generator.choice(_NUMBERS)
        if kind < 0.85:
            return _string(generator)
        return generator.choice(["true", "false", "null"])
    count = generator.randrange(5)
    if roll < 0.55:
        items = [_value(generator, depth + 1) for _ in range(count)]
        return "[" + space + ("," + space).join(items) + space + "]"
    if generator.random() < 0.3:  # keys "0" … "n-1", maybe out of order
        keys = [str(index) for index in range(count)]
        if generator.random() < 0.3:
            generator.shuffle(keys)
        keys = [json.dumps(key) for key in keys]
    else:
        keys = [
            json.dumps(generator.choice(_KEYS), ensure_ascii=generator.random() < 0.5)
            if generator.random() < 0.7
            else _string(generator)
            for _ in range(count)
        ]
    members = [f"{key}{space}:{space}{_value(generator, depth + 1)}" for key in keys]
    return "{" + space + ("," + space).join(members) + space + "}"


def test_integers_of_any_length_as_php_reads_them(tmp_path: Path) -> None:
    """PHP reads an integer of any length as its digits (JSON_BIGINT_AS_STRING), as a key
    too; Python refuses to read more than 4300 digits (found by the second reading: such
    a payload was dead-lettered where Tuleap runs it)."""
    digits = "1" * 5000
    cases = [
        ("tuleap.fts.index-item", digits),
        ("tuleap.fts.index-item", "-" + "9" * 4301),
        ("tuleap.fts.index-item", '{"n":' + digits + ',"m":[1,12345678901234567890]}'),
        ("tuleap.fts.index-item", '{"' + digits + '":1}'),
        ("tuleap.fts.index-item", '{"-' + digits + '":1}'),
        ("tuleap.fts.index-item", "[" + digits + ", 1e400]"),
    ]
    assert_like_php(cases, tmp_path)


def test_a_refused_payload_says_phps_reason(tmp_path: Path) -> None:
    """The dead letter carries PHP's reason: what PHP's scanner meets first (a raw control
    character, a lone surrogate escape before a syntax error)."""
    cases = [
        ("t", '["a\x01b"]'),
        ("t", "[1]\x00"),
        ("t", "[1]\x0b"),
        ("t", '[1,] "\\ud800"'),
        ("t", '{"a":1 "b":"\\udc00"}'),
        ("t", '["\\ud800", 1,]'),
        ("t", "[1,]"),
    ]
    assert_like_php(cases, tmp_path)
