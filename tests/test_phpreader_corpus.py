"""tuitop's PHP reader against real ``php`` on hand-written configs (tests/fixtures/php).

* ``valid/*.inc``: valid PHP inside the subset; tuitop must give every variable php's value
  and type (floats to the bit), in php's order, with the same runtime warnings.
* ``pairs/*/``: local.inc then redis.inc, as Tuleap loads them: a scope per file, shared
  constants, later file wins.
* ``broken/*.inc``: syntax errors; ``php -l`` fails and tuitop raises ConfigError on the line
  php names.
* Snippets php accepts but tuitop refuses (outside the subset), and snippets php compiles
  but cannot run (runtime errors), which tuitop must refuse too.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.php_oracle import (
    ENVIRON,
    PHP,
    PHP_FLAGS,
    UNSUPPORTED,
    PhpRun,
    canonical,
    canonical_vars,
    lint_php,
    run_php,
)
from tuitop.errors import ConfigError
from tuitop.phpreader import FileScope, PhpInterpreter

pytestmark = pytest.mark.skipif(shutil.which("php") is None, reason="needs the php CLI")

FIXTURES = Path(__file__).parent / "fixtures" / "php"
VALID = sorted((FIXTURES / "valid").glob("*.inc"))
BROKEN = sorted((FIXTURES / "broken").glob("*.inc"))
PAIRS = sorted(path for path in (FIXTURES / "pairs").iterdir() if path.is_dir())


def run_tuitop(paths: Sequence[Path | str], environ: dict[str, str]) -> list[FileScope]:
    """The files through one PhpInterpreter, as tuitop loads local.inc then redis.inc."""
    interpreter = PhpInterpreter(environ=environ)
    return [interpreter.run_file(str(path)) for path in paths]


def assert_same_scope(php: PhpRun, file_index: int, scope: FileScope) -> None:
    expected = canonical_vars(php.files[file_index])
    actual = canonical_vars(scope.variables)
    assert actual == expected
    assert list(actual) == list(expected), "variables in another order than php's"
    assert sorted(w.message.lower() for w in scope.warnings) == php.runtime_warnings(file_index)


# --- the oracle itself -----------------------------------------------------------------


def test_oracle_php_settings_match_the_default_ini() -> None:
    """-n drops php.ini; the flags restore what matters: precision, short tags."""
    script = (
        'echo ini_get("precision"), " ", ini_get("serialize_precision"), " ", '
        'ini_get("short_open_tag") ? "on" : "off";'
    )
    with_flags = subprocess.run(
        [PHP, *PHP_FLAGS, "-r", script], capture_output=True, check=True, env={}
    ).stdout
    assert with_flags == b"14 -1 off"
    default = subprocess.run([PHP, "-r", script], capture_output=True, check=True, env={}).stdout
    assert default.split()[:2] == [b"14", b"-1"]


def test_oracle_decodes_every_value_exactly(tmp_path: Path) -> None:
    path = tmp_path / "values.inc"
    path.write_bytes(
        b'<?php\n$nan = INF - INF; $neg_zero = -0.0; $bytes = "\\xff\\x00";\n'
        b"$int = PHP_INT_MIN; $t = true; $n = null; $f = false; $\xe9 = 0.1;\n"
    )
    php = run_php([str(path)], {})
    assert php.error is None
    values = php.files[0]
    assert list(values) == ["nan", "neg_zero", "bytes", "int", "t", "n", "f", "\udce9"]
    assert canonical(values["nan"]) == ("float", "fff8000000000000 (nan)")
    assert canonical(values["neg_zero"]) != canonical(0.0)
    assert values["bytes"] == b"\xff\x00"
    assert canonical(values["int"]) == ("int", -(2**63))
    assert canonical(values["t"]) == ("bool", True)
    assert canonical(values["n"]) == ("null", None)
    assert canonical(values["f"]) != canonical(0)
    assert values["\udce9"] == 0.1


def test_oracle_reports_runtime_errors_and_lint_errors(tmp_path: Path) -> None:
    path = tmp_path / "runtime.inc"
    path.write_text("<?php\n$a = 1;\n$b = 1 % 0;\n")
    php = run_php([str(path)], {})
    assert php.error is not None
    assert (php.error.class_name, php.error.line) == ("DivisionByZeroError", 3)
    assert not php.error.is_compile_error
    assert lint_php(str(path)).ok

    broken = tmp_path / "broken.inc"
    broken.write_text("<?php\n$a = 1\n$b = 2;\n")
    lint = lint_php(str(broken))
    assert (lint.ok, lint.line) == (False, 3)
    assert lint.message.startswith("Parse error: syntax error")
    assert run_php([str(broken)], {}).error.is_compile_error  # type: ignore[union-attr]

    fatal = tmp_path / "fatal.inc"
    fatal.write_text("<?php\n$a = 1;\n$this = 2;\n")
    ok, line, message = lint_php(str(fatal))
    assert (ok, line, message) == (False, 3, "Fatal error: Cannot re-assign $this")
    first = tmp_path / "first.inc"
    first.write_text("<?php\n$ok = 1;\n")
    php = run_php([str(first), str(fatal)], {})
    assert php.error is not None
    assert (php.error.file_index, php.error.line, php.error.class_name) == (1, 3, "FatalError")
    assert php.error.is_compile_error


# --- valid files -----------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=[path.stem for path in VALID])
def test_valid_fixture_gives_php_values(path: Path) -> None:
    lint = lint_php(str(path))
    assert lint.ok, lint
    php = run_php([str(path)], ENVIRON)
    assert php.error is None, php.error
    [scope] = run_tuitop([path], ENVIRON)
    assert_same_scope(php, 0, scope)


@pytest.mark.parametrize("directory", PAIRS, ids=[path.name for path in PAIRS])
def test_local_then_redis_like_tuleap(directory: Path) -> None:
    paths = [directory / "local.inc", directory / "redis.inc"]
    php = run_php([str(path) for path in paths], ENVIRON)
    assert php.error is None, php.error
    scopes = run_tuitop(paths, ENVIRON)
    for index, scope in enumerate(scopes):
        assert_same_scope(php, index, scope)
    merged: dict[str, object] = {}
    for scope in scopes:
        merged.update(scope.variables)
    assert canonical_vars(merged) == canonical_vars(php.merged)  # type: ignore[arg-type]
    assert list(merged) == list(php.merged)


def test_pairs_show_scopes_and_constants() -> None:
    """What the pairs are about, spelled out (php agrees, as the test above checks)."""
    _, redis = run_tuitop(
        [FIXTURES / "pairs" / "scopes_are_separate" / name for name in ("local.inc", "redis.inc")],
        ENVIRON,
    )
    assert redis.variables["redis_server"] == b"redis."
    assert redis.variables["seen"] is None
    _, redis = run_tuitop(
        [FIXTURES / "pairs" / "constants_shared" / name for name in ("local.inc", "redis.inc")],
        ENVIRON,
    )
    assert redis.variables == {"redis_server": b"redis.tuleap.example.com", "redis_port": 6379}


# --- syntax errors ---------------------------------------------------------------------


@pytest.mark.parametrize("path", BROKEN, ids=[path.stem for path in BROKEN])
def test_broken_fixture_fails_on_php_line(path: Path) -> None:
    lint = lint_php(str(path))
    assert not lint.ok, "php accepts this file: it does not belong in broken/"
    with pytest.raises(ConfigError) as caught:
        run_tuitop([path], ENVIRON)
    assert caught.value.path == str(path)
    assert caught.value.line == lint.line, f"php: {lint.message}; tuitop: {caught.value}"


# --- valid PHP outside the subset ------------------------------------------------------

# (source after "<?php\n", line and column of the construct tuitop must name)
OUT_OF_SUBSET = [
    ("include 'x.php';", 2, 1),
    ("require_once '/etc/tuleap/conf/other.inc';", 2, 1),
    ("$a = 1;\nfoo();", 3, 1),
    ("$f = 'strlen';\n$a = $f('x');", 3, 8),
    ("$a = 'strlen'('x');", 2, 14),
    ("$a = strlen('x');", 2, 6),
    ("$a = array(1);", 2, 6),
    ("$a = [1, 2];", 2, 6),
    ("$a = [];", 2, 6),
    ("class A {}", 2, 1),
    ("if (true) { $a = 1; }", 2, 1),
    ("$a = 'b';\n$$a = 1;", 3, 1),
    ("$a = <<<EOT\nx\nEOT;\n", 2, 6),
    ("$a = <<<'EOT'\nx\nEOT;\n", 2, 6),
    ("$a = `ls`;", 2, 6),
    ("$a = 'x';\n$b = \"$a[0]\";", 3, 9),
    ("$a = 'x';\n$b = \"{$a->b}\";", 3, 7),
    ("$a = 'x';\n$b = \"$a->b\";", 3, 9),
    ("$a = 'x';\n$b = $a[0];", 3, 8),
    ("$a = 1 == 1;", 2, 8),
    ("$a = $b ?? 'x';", 2, 9),
    ("$a = getenv('X') ?: 'd';", 2, 18),
    ("$a = true ? 1 : 2;", 2, 11),
    ("$a = 2 ** 3;", 2, 8),
    ("$a = 1 << 2;", 2, 8),
    ("$a = @getenv('X');", 2, 6),
    ("$a = (int) '5';", 2, 6),
    ("$a = ( string )5;", 2, 6),
    ("$a = 1;\n$a++;", 3, 3),
    ("$a = null;\n$a ??= 1;", 3, 4),
    ("$a = \\PHP_EOL;", 2, 6),
    ("$a = E_ALL;", 2, 6),
    ("$a = getenv();", 2, 6),
    ("$a = getenv(null);", 2, 6),
    ("echo 'x';", 2, 1),
    ("$a = 1 and 2;", 2, 8),
    ("$a = new stdClass;", 2, 6),
    ("$a = 1;\n$b = &$a;", 3, 6),
    ("{ $a = 1; }", 2, 1),
    ("$a = $_SERVER;", 2, 6),
    ("$_ENV = 1;", 2, 1),
    ("$a = $GLOBALS['x'];", 2, 6),
    ("$a = 1;\n?>\n<?= $a ?>", 4, 1),
]


@pytest.mark.parametrize(("source", "line", "column"), OUT_OF_SUBSET)
def test_valid_php_outside_the_subset_is_refused(
    tmp_path: Path, source: str, line: int, column: int
) -> None:
    path = tmp_path / "config.inc"
    path.write_text("<?php\n" + source + "\n")
    assert lint_php(str(path)).ok, "php must accept this"
    with pytest.raises(ConfigError) as caught:
        run_tuitop([path], {})
    assert UNSUPPORTED.search(caught.value.reason), caught.value
    assert (caught.value.line, caught.value.column) == (line, column), caught.value


# --- valid PHP that fails when run ----------------------------------------------------

RUNTIME_ERRORS = [
    ("$a = 1;\n$b = 1 % 0;", "DivisionByZeroError", 3),
    ("$a = 1;\n$b = 1 / 0;", "DivisionByZeroError", 3),
    ("$a = 0;\n$b = 1 / $a;", "DivisionByZeroError", 3),
    ("$a = '0.0';\n$b = 1 % $a;", "DivisionByZeroError", 3),
    ("$a = 'abc' + 1;", "TypeError", 2),
    ("$a = -'abc';", "TypeError", 2),
    ("$a = 'x';\n$a += 1;", "TypeError", 3),
    ("$a = '' * 2;", "TypeError", 2),
    ("$a = ' ' - 1;", "TypeError", 2),
    ("$a = UNDEFINED_CONSTANT;", "Error", 2),
    ("$a = Php_Eol;", "Error", 2),
    ("$a = APP . 'x';\ndefine('APP', 1);", "Error", 2),
    ("$a = $this;", "Error", 2),
    ("$this .= 'x';", "Error", 2),
    ("$a = 'x'; $b = \"$this\";", "Error", 2),
    ("foo();", "Error", 2),
    ("$a = 1;\n$b = define('X');", "ArgumentCountError", 3),
    ("$a = getenv('A', true, 3);", "ArgumentCountError", 2),
]


@pytest.mark.parametrize(("source", "error", "line"), RUNTIME_ERRORS)
def test_runtime_error_in_php_is_config_error(
    tmp_path: Path, source: str, error: str, line: int
) -> None:
    path = tmp_path / "config.inc"
    path.write_text("<?php\n" + source + "\n")
    assert lint_php(str(path)).ok
    php = run_php([str(path)], {})
    assert php.error is not None
    assert (php.error.class_name, php.error.line) == (error, line)
    with pytest.raises(ConfigError) as caught:
        run_tuitop([path], {})
    assert caught.value.line == line, caught.value


def test_constant_from_first_file_undefined_before_define(tmp_path: Path) -> None:
    """A constant used in local.inc but defined in redis.inc is undefined: files run in order."""
    local = tmp_path / "local.inc"
    local.write_text("<?php\n$a = LATER;\n")
    redis = tmp_path / "redis.inc"
    redis.write_text("<?php\ndefine('LATER', 1);\n")
    php = run_php([str(local), str(redis)], {})
    assert php.error is not None
    assert (php.error.file_index, php.error.line) == (0, 2)
    with pytest.raises(ConfigError) as caught:
        run_tuitop([local, redis], {})
    assert (caught.value.path, caught.value.line) == (str(local), 2)


@pytest.mark.xfail(
    strict=True,
    reason="design: tuitop stops at the first construct outside the subset, so a syntax "
    "error further down is reported at the construct, not on php's line",
)
def test_syntax_error_after_unsupported_construct(tmp_path: Path) -> None:
    path = tmp_path / "config.inc"
    path.write_text("<?php\n$a = foo();\n$b = ;\n")
    lint = lint_php(str(path))
    assert (lint.ok, lint.line) == (False, 3)
    with pytest.raises(ConfigError) as caught:
        run_tuitop([path], {})
    assert caught.value.line == 3, caught.value  # tuitop: 2, "function foo() is not supported"


@pytest.mark.xfail(
    strict=True,
    reason="design: tuitop knows only a few of PHP's built-in constants (the full list "
    "depends on the extensions loaded), so define() of another one succeeds in tuitop",
)
def test_define_of_a_php_constant_tuitop_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "config.inc"
    path.write_text("<?php\n$ok = define('E_ALL', 1);\n")
    php = run_php([str(path)], {})
    assert php.error is None
    assert php.files[0] == {"ok": False}  # "Constant E_ALL already defined"
    [scope] = run_tuitop([path], {})
    assert scope.variables == {"ok": False}  # tuitop: True, and E_ALL is then 1


@pytest.mark.xfail(
    strict=True,
    reason="design: php reports a runtime error (and warning) of a statement that spans "
    "lines on the line of the last operand compiled before the failing opcode; tuitop "
    "reports the operator. Values are the same; only the line differs",
)
def test_runtime_error_line_in_statement_over_several_lines(tmp_path: Path) -> None:
    path = tmp_path / "config.inc"
    path.write_text("<?php\n$a = 1\n  /\n  0;\n")
    php = run_php([str(path)], {})
    assert php.error is not None
    assert (php.error.class_name, php.error.line) == ("DivisionByZeroError", 4)
    with pytest.raises(ConfigError) as caught:
        run_tuitop([path], {})
    assert caught.value.line == 4, caught.value  # tuitop: 3, where the "/" is
