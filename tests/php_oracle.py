"""Real ``php`` as the oracle for tuitop's PHP-subset reader.

:func:`run_php` includes config files the way Tuleap does (each inside a function of its
own, constants shared, ``get_defined_vars()`` afterwards) and returns every variable as a
:data:`~tuitop.phpreader.PhpValue`, decoded exactly: strings travel as base64 (they may
not be UTF-8), floats as their 8 bytes (NaN, -0.0 and every bit survive). :func:`lint_php`
runs ``php -l``. :func:`canonical` turns values into something ``==`` compares as PHP's
``===`` would, with floats by their bits (a NaN equals a NaN of the same bits, -0.0
differs from 0.0).

``php`` runs with ``-n`` (no php.ini, so the machine's ini files cannot change the result)
and the settings that matter given explicitly: ``short_open_tag`` is off as in the
php.ini-production and -development files distributions install (the built-in default is
on, which would make ``<?`` open PHP code); ``precision`` 14 and ``serialize_precision``
-1 are PHP's defaults, restated so a float's string form cannot drift. Errors go to
stderr, never into the JSON on stdout.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tuitop.phpreader import PhpValue

PHP = shutil.which("php") or "/usr/bin/php"

# The environment of the differential tests: what getenv() sees in php and in tuitop alike.
ENVIRON = {
    "HOME": "/root",
    "SET": "value",
    "EMPTY": "",
    "NUM": "41",
    "UTF8": "café",
    "REDIS_PASSWORD": "s3cret",
    "TULEAP_DB_PASSWORD": "hunter2",
}

# tuitop's ConfigError for valid PHP must say that the construct is outside the subset.
UNSUPPORTED = re.compile(r"support")

E_WARNING = 2

PHP_FLAGS = (
    "-n",
    "-d", "short_open_tag=0",
    "-d", "precision=14",
    "-d", "serialize_precision=-1",
    "-d", "error_reporting=-1",
    "-d", "display_errors=stderr",
    "-d", "log_errors=0",
    "-d", "memory_limit=128M",
)  # fmt: skip

# Run with ``php -r CODE -- FILE...``. The loader mirrors Tuleap's ForgeConfig: include in
# a function, drop the parameter, return get_defined_vars(). Text outside <?php ?> is
# echoed by PHP; it is buffered so that only the JSON reaches stdout.
_DRIVER = r"""
function __tuitop_load($__tuitop_file) {
    include $__tuitop_file;
    unset($__tuitop_file);
    return get_defined_vars();
}
function __tuitop_encode($v) {
    if (is_string($v)) return ['s', base64_encode($v)];
    if (is_bool($v)) return ['b', $v];
    if (is_int($v)) return ['i', (string) $v];
    if (is_float($v)) return ['f', bin2hex(pack('E', $v))];
    if (is_null($v)) return ['n', null];
    return ['?', gettype($v)];
}
$__tuitop_index = 0;
$__tuitop_warnings = [];
set_error_handler(
    function ($level, $message, $file, $line) use (&$__tuitop_warnings, &$__tuitop_index) {
        $__tuitop_warnings[] = [$__tuitop_index, $line, $level, base64_encode($message)];
        return true;
    }
);
$__tuitop_result = ['files' => [], 'error' => null];
foreach (array_slice($argv, 1) as $__tuitop_index => $__tuitop_path) {
    ob_start();
    try {
        $__tuitop_vars = __tuitop_load($__tuitop_path);
    } catch (Throwable $e) {
        ob_end_clean();
        $__tuitop_result['error'] = [
            $__tuitop_index, $e->getLine(), get_class($e), base64_encode($e->getMessage()),
        ];
        break;
    }
    $__tuitop_output = ob_get_clean();
    $__tuitop_encoded = [];
    foreach ($__tuitop_vars as $__tuitop_name => $__tuitop_value) {
        $__tuitop_encoded[] = [
            base64_encode((string) $__tuitop_name), __tuitop_encode($__tuitop_value),
        ];
    }
    $__tuitop_result['files'][] = [
        'vars' => $__tuitop_encoded, 'output' => base64_encode($__tuitop_output),
    ];
}
$__tuitop_result['warnings'] = $__tuitop_warnings;
echo json_encode($__tuitop_result, JSON_THROW_ON_ERROR);
"""

# Errors of compiling the included file, not of running it. "FatalError" stands for a
# fatal error that is no Throwable (E_COMPILE_ERROR such as "Cannot re-assign $this"): php
# dies of it, so run_php reads it from stderr.
COMPILE_ERRORS = frozenset({"ParseError", "CompileError", "FatalError"})


@dataclass(frozen=True)
class Unrepresentable:
    """A value outside the subset (array, object...): tuitop must have refused the file."""

    php_type: str


OracleValue = PhpValue | Unrepresentable


@dataclass(frozen=True)
class PhpWarning:
    """A non-fatal diagnostic (E_WARNING, E_DEPRECATED...) raised while a file ran."""

    file_index: int
    line: int
    level: int
    message: str


@dataclass(frozen=True)
class PhpError:
    """The Throwable that stopped the run: in which file, on which line, of which class."""

    file_index: int
    line: int
    class_name: str
    message: str

    @property
    def is_compile_error(self) -> bool:
        return self.class_name in COMPILE_ERRORS


@dataclass(frozen=True)
class PhpRun:
    """What php made of a list of files: one variable dict per file that ran to the end.

    If ``error`` is set, ``files`` holds only the files before the one that failed (none
    at all after a "FatalError", which kills php before it reports anything).
    """

    files: list[dict[str, OracleValue]]
    outputs: list[bytes]
    warnings: list[PhpWarning] = field(default_factory=list)
    error: PhpError | None = None

    def runtime_warnings(self, file_index: int) -> list[str]:
        """The E_WARNINGs of one file, lower-cased and sorted, as tuitop's are compared.

        Compile-time warnings and deprecations are left out: tuitop reports neither.
        """
        return sorted(
            warning.message.lower()
            for warning in self.warnings
            if warning.level == E_WARNING and warning.file_index == file_index
        )

    @property
    def merged(self) -> dict[str, OracleValue]:
        """Tuleap's array_merge of the files' variables: later files win."""
        result: dict[str, OracleValue] = {}
        for variables in self.files:
            result.update(variables)
        return result


class OracleFailure(RuntimeError):
    """php itself did not behave (crashed, printed no JSON): not a verdict on the file."""


def _decode_value(encoded: list[object]) -> OracleValue:
    tag, payload = encoded
    if tag == "s":
        assert isinstance(payload, str)
        return base64.b64decode(payload)
    if tag == "b":
        assert isinstance(payload, bool)
        return payload
    if tag == "i":
        assert isinstance(payload, str)
        return int(payload)
    if tag == "f":
        assert isinstance(payload, str)
        value: float = struct.unpack(">d", bytes.fromhex(payload))[0]
        return value
    if tag == "n":
        return None
    return Unrepresentable(str(payload))


def _text(encoded: str) -> str:
    # tuitop keeps names (also inside messages) as str, non-UTF-8 bytes as surrogate escapes.
    return base64.b64decode(encoded).decode("utf-8", "surrogateescape")


def run_php(paths: Sequence[str], environ: Mapping[str, str]) -> PhpRun:
    """Includes ``paths`` in order, as Tuleap does, with ``environ`` as the whole environment."""
    completed = subprocess.run(
        [PHP, *PHP_FLAGS, "-r", _DRIVER, "--", *paths],
        env=dict(environ),
        capture_output=True,
        timeout=60,
        check=False,
    )
    try:
        result = json.loads(completed.stdout)
    except ValueError:
        fatal = _ERROR.search(completed.stderr.decode("utf-8", "surrogateescape"))
        if fatal is None:
            raise OracleFailure(
                f"php exited {completed.returncode} without a result: "
                f"{completed.stderr.decode(errors='replace')}"
            ) from None
        real = [os.path.realpath(path) for path in paths]
        where = os.path.realpath(fatal["path"])
        index = real.index(where) if where in real else -1
        died = PhpError(index, int(fatal["line"]), "FatalError", fatal["message"])
        return PhpRun([], [], [], died)
    files = [
        {_text(name): _decode_value(value) for name, value in entry["vars"]}
        for entry in result["files"]
    ]
    outputs = [base64.b64decode(entry["output"]) for entry in result["files"]]
    warnings = [
        PhpWarning(index, line, level, _text(message))
        for index, line, level, message in result["warnings"]
    ]
    error: PhpError | None = None
    if result["error"] is not None:
        index, line, class_name, message = result["error"]
        error = PhpError(index, line, class_name, _text(message))
    return PhpRun(files, outputs, warnings, error)


class LintResult(NamedTuple):
    """``php -l``'s verdict, ``(ok, line, message)``: those of the error it printed."""

    ok: bool
    line: int | None
    message: str


_ERROR = re.compile(
    # The message itself may contain " in " (Cannot redeclare f() (previously declared in
    # x:2) in x on line 3): the greedy message leaves only the last " in ... on line N".
    r"^(?:PHP )?(?P<kind>Parse error|Fatal error):\s+(?P<message>.*)"
    r" in (?P<path>.*) on line (?P<line>\d+)$",
    re.MULTILINE,
)


def lint_php(path: str) -> LintResult:
    """Runs ``php -l path``: is the file valid PHP, and if not, on which line is the error."""
    completed = subprocess.run(
        [PHP, *PHP_FLAGS, "-l", path],
        env={},
        capture_output=True,
        timeout=60,
        check=False,
    )
    text = (completed.stderr + completed.stdout).decode(errors="replace")
    match = _ERROR.search(text)
    if completed.returncode == 0 and match is None:
        return LintResult(True, None, "")
    if match is None:
        raise OracleFailure(f"php -l exited {completed.returncode} but printed no error: {text}")
    line = int(match["line"]) if match["line"] else None
    return LintResult(False, line, f"{match['kind']}: {match['message']}")


def canonical(value: OracleValue) -> tuple[str, object]:
    """``value`` in a form where ``==`` is PHP's ``===``, with floats compared by bits."""
    if isinstance(value, Unrepresentable):
        return ("unrepresentable", value.php_type)
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        # The bits decide; the repr is there for a readable assertion message.
        shown = repr(value) if not math.isnan(value) else "nan"
        return ("float", f"{struct.pack('>d', value).hex()} ({shown})")
    return ("string", value)


def canonical_vars(variables: Mapping[str, OracleValue]) -> dict[str, tuple[str, object]]:
    """A variable dict with :func:`canonical` values (compare ``list()`` of it for order)."""
    return {name: canonical(value) for name, value in variables.items()}
