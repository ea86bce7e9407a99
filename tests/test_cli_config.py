"""`tuitop config`, run as the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pool import REPO, run_tuitop

SECRET = "s3cret-value-that-must-never-be-printed-anywhere"


def write(path: Path, body: str) -> str:
    path.write_text("<?php\n" + body)
    return str(path)


def test_prints_effective_settings(tmp_path: Path) -> None:
    local = write(
        tmp_path / "local.inc", "$sys_nb_backend_workers = 3;\n$sys_async_emails = '7,8';"
    )
    redis = write(
        tmp_path / "redis.inc",
        "$redis_server = 'tls://r.example';\n$redis_password = '${REDIS_PASSWORD}';",
    )
    result = run_tuitop(
        "config", "--config", local, "--config", redis, env={"REDIS_PASSWORD": SECRET}
    )
    assert result.returncode == 0, result.stderr
    assert "backend workers  3" in result.stdout
    assert "async emails     7,8" in result.stdout
    assert "tls://r.example:6379 (password set)" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_json_has_variables_and_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path / "local.inc",
        f"$redis_server = 'h';\n$redis_password = '{SECRET}';\n$other = 1.5 . 'x';\n"
        "$big = PHP_INT_MAX + 1;\n$inf = INF;\n$sys_noreply = 'n@example.com';",
    )
    result = run_tuitop("config", "--json", "--config", config)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["variables"] == {
        "redis_server": "h",
        "redis_password": "***",
        "other": "1.5x",
        "big": 9.223372036854776e18,
        "inf": "INF",
        "sys_noreply": "n@example.com",
    }
    assert document["settings"]["backend_workers"] == 2
    assert document["settings"]["redis"]["password"] == "***"
    assert document["settings"]["files"] == [config]
    assert SECRET not in result.stdout + result.stderr


def test_only_what_can_be_a_secret_is_masked(tmp_path: Path) -> None:
    """A kind of authentication (``plain``, ``login``) is no secret: shown (issue 22);
    a relay's password is."""
    config = write(
        tmp_path / "local.inc",
        "$redis_server = 'h';\n$email_relayhost_smtp_auth_type = 'login';\n"
        "$email_relayhost_smtp_password = 'relay-pw';\n$my_auth = 'x';",
    )
    result = run_tuitop("config", "--json", "--config", config)
    variables = json.loads(result.stdout)["variables"]
    assert variables["email_relayhost_smtp_auth_type"] == "login"
    assert variables["email_relayhost_smtp_password"] == "***"
    assert variables["my_auth"] == "***"


def test_syntax_error_exits_2_with_place_and_no_traceback(tmp_path: Path) -> None:
    config = write(
        tmp_path / "local.inc", f"$redis_password = '{SECRET}'\n$sys_nb_backend_workers = 3;"
    )
    result = run_tuitop("config", "--config", config)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{config}:3:1: expected ';', found variable $sys_nb_backend_workers" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


def test_json_error_also_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path / "local.inc", "$sys_logger_level = 'loud';")
    result = run_tuitop("config", "--json", "--config", config)
    assert result.returncode == 2
    assert "sys_logger_level" in result.stderr
    assert f"{config}:2:1:" in result.stderr


def test_named_missing_file_is_an_error(tmp_path: Path) -> None:
    result = run_tuitop("config", "--config", str(tmp_path / "missing.inc"))
    assert result.returncode == 2
    assert "missing.inc" in result.stderr
    assert "cannot read" in result.stderr


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    config = write(tmp_path / "redis.inc", "$redis_password = '${TUITOP_TEST_UNSET_VAR}';")
    result = run_tuitop("config", "--config", config)
    assert result.returncode == 2
    assert "TUITOP_TEST_UNSET_VAR" in result.stderr


def test_default_files_missing_are_skipped() -> None:
    if any(Path(p).exists() for p in ("/etc/tuleap/conf/local.inc", "/etc/tuleap/conf/redis.inc")):
        return  # a real Tuleap host: the defaults are read, which other tests cover
    result = run_tuitop("config")
    assert result.returncode == 0, result.stderr
    assert "(none found: built-in defaults)" in result.stdout
    assert "(not configured)" in result.stdout


def test_warnings_go_to_stderr(tmp_path: Path) -> None:
    config = write(tmp_path / "local.inc", "$email_transport = 'pigeon';\n$x = $undefined;")
    result = run_tuitop("config", "--config", config)
    assert result.returncode == 0
    assert "'pigeon'" in result.stderr
    assert "undefined variable $undefined" in result.stderr


def test_a_pool_name_that_would_meet_other_keys_is_refused(tmp_path: Path) -> None:
    """``x:owner`` would write its heartbeat onto pool x's lease; ``a/b`` or ``a#1`` would
    make worker ids that read as another pool's."""
    config = write(tmp_path / "local.inc", "$sys_nb_backend_workers = 1;")
    for name in ("x:owner", "a/b", "a#1", "", "-x"):
        result = run_tuitop("--no-ui", "--config", config, f"--pool-name={name}")
        assert result.returncode == 2, name
        assert "a pool name is 1 to 200 letters" in result.stderr


def test_a_host_name_that_cannot_name_a_pool_asks_for_one(tmp_path: Path) -> None:
    """The default pool name is the host name: one with a ':' (say) is refused too."""
    config = write(tmp_path / "local.inc", "$sys_nb_backend_workers = 1;")
    # A real process with another host name: its own UTS namespace (unshare) when this
    # machine allows it, else the check is not testable here.
    probe = subprocess.run(["unshare", "-U", "-r", "-u", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no user namespaces here to run with another host name")
    result = subprocess.run(
        ["unshare", "-U", "-r", "-u", "sh", "-c",
         f"{sys.executable} -c 'import socket; socket.sethostname(\"bad:name\")' && "
         f"{sys.executable} -m tuitop --no-ui --config {config}"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cannot name a pool" in result.stderr and "--pool-name" in result.stderr
