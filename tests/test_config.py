"""The rules that turn Tuleap's variables into Settings (tuleap-compat.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuitop.config import (
    AsyncScope,
    ConfigError,
    LoadedConfig,
    LogLevel,
    Secret,
    Settings,
    load_config,
)
from tuitop.lanes import DEFAULT_SPEC, LaneSet

REPO = Path(__file__).resolve().parent.parent


def load(tmp_path: Path, *bodies: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    paths = []
    for index, body in enumerate(bodies):
        path = tmp_path / f"file{index}.inc"
        path.write_text("<?php\n" + body)
        paths.append(str(path))
    return load_config(paths, environ=environ or {})


def settings(tmp_path: Path, body: str, environ: dict[str, str] | None = None) -> Settings:
    return load(tmp_path, body, environ=environ).settings


REDIS = "$redis_server = '127.0.0.1';\n"


# --- worker count ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (REDIS, 2),  # unset → 2
        (REDIS + "$sys_nb_backend_workers = 5;", 5),
        (REDIS + "$sys_nb_backend_workers = -3;", 3),  # abs()
        (REDIS + "$sys_nb_backend_workers = '4';", 4),
        (REDIS + "$sys_nb_backend_workers = '7 workers';", 7),  # (int) cast
        (REDIS + "$sys_nb_backend_workers = 'many';", 0),
        (REDIS + "$sys_nb_backend_workers = 2.9;", 2),
        (REDIS + "$sys_nb_backend_workers = null;", 2),  # isset() is false for null
        (REDIS + "$sys_nb_backend_workers = 0;", 0),
        (REDIS + "$sys_nb_backend_workers = false;", 0),
        (REDIS + "$sys_nb_backend_workers = true;", 1),
    ],
)
def test_worker_count_follows_tuleap(tmp_path: Path, body: str, expected: int) -> None:
    assert settings(tmp_path, body).backend_workers == expected


def test_no_redis_server_means_no_worker(tmp_path: Path) -> None:
    assert settings(tmp_path, "$sys_nb_backend_workers = 8;").backend_workers == 0
    body = "$redis_server = ''; $sys_nb_backend_workers = 8; $sys_async_emails = 'all';"
    assert settings(tmp_path, body).backend_workers == 0


@pytest.mark.parametrize("scope", ["'all'", "'101'", "'101,102'"])
def test_async_scope_starts_at_least_one_worker(tmp_path: Path, scope: str) -> None:
    body = REDIS + f"$sys_nb_backend_workers = 0; $sys_async_emails = {scope};"
    assert settings(tmp_path, body).backend_workers == 1


def test_async_scope_does_not_lower_worker_count(tmp_path: Path) -> None:
    body = REDIS + "$sys_nb_backend_workers = 6; $sys_async_emails = 'all';"
    assert settings(tmp_path, body).backend_workers == 6


def test_empty_scope_does_not_start_a_worker(tmp_path: Path) -> None:
    body = REDIS + "$sys_nb_backend_workers = 0; $sys_async_emails = '';"
    assert settings(tmp_path, body).backend_workers == 0


def test_absurd_worker_count_is_refused_with_its_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, REDIS + "$sys_nb_backend_workers = 100000;")
    assert (caught.value.line, caught.value.column) == (3, 1)
    assert "1024" in caught.value.reason


# --- async scope -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "none"),
        ("''", "none"),
        ("0", "none"),
        ("'0'", "none"),
        ("false", "none"),
        ("null", "none"),
        ("'all'", "all"),
        ("true", "all"),  # PHP: true == 'all'
        ("'101'", "101"),
        ("'101,102, 103 '", "101,102,103"),
        ("' 7 ,\t8\n'", "7,8"),
        ("42", "42"),
        ("'ALL'", "0"),  # not 'all': explode → (int) 'ALL' = 0, as Tuleap reads it
        ("'12abc,13'", "12,13"),
    ],
)
def test_async_scope_follows_tuleap(tmp_path: Path, value: str | None, expected: str) -> None:
    body = REDIS + (f"$sys_async_emails = {value};" if value is not None else "")
    assert str(settings(tmp_path, body).async_scope) == expected


def test_async_scope_covers() -> None:
    assert AsyncScope(all_projects=True).covers(5)
    assert AsyncScope(project_ids=frozenset({1, 2})).covers(2)
    assert not AsyncScope(project_ids=frozenset({1, 2})).covers(3)
    assert not AsyncScope().covers(1)
    assert not AsyncScope().enabled


@pytest.mark.parametrize("text", ["none", "all", "7", "1,2,30"])
def test_async_scope_parse_is_inverse_of_str(text: str) -> None:
    assert str(AsyncScope.parse(text)) == text


def test_async_scope_item_that_is_not_a_number_warns(tmp_path: Path) -> None:
    result = settings(tmp_path, REDIS + "$sys_async_emails = '101,abc';")
    assert result.async_scope.project_ids == frozenset({101, 0})
    assert any("'abc'" in warning for warning in result.warnings)


# --- log level -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'debug'", LogLevel.DEBUG),
        ("'info'", LogLevel.INFO),
        ("'warning'", LogLevel.WARNING),
        ("'warn'", LogLevel.WARNING),
        ("'error'", LogLevel.ERROR),
        ("'Debug'", LogLevel.DEBUG),
        ("' info '", LogLevel.INFO),
    ],
)
def test_log_level(tmp_path: Path, value: str, expected: LogLevel) -> None:
    assert settings(tmp_path, f"$sys_logger_level = {value};").log_level is expected


def test_log_level_default_is_warning(tmp_path: Path) -> None:
    assert settings(tmp_path, "").log_level is LogLevel.WARNING


@pytest.mark.parametrize("value", ["'verbose'", "''", "3", "true"])
def test_unknown_log_level_names_the_allowed_ones(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"$x = 1;\n  $sys_logger_level = {value};")
    error = caught.value
    assert (error.line, error.column) == (3, 3)
    for allowed in ("debug", "info", "warning", "warn", "error"):
        assert f"'{allowed}'" in error.reason


# --- redis -----------------------------------------------------------------------------


def test_redis_defaults(tmp_path: Path) -> None:
    redis = settings(tmp_path, "").redis
    assert not redis.configured
    assert (redis.host, redis.port, redis.tls) == ("", 6379, False)
    assert redis.address == "(not configured)"


def test_redis_tls_prefix(tmp_path: Path) -> None:
    redis = settings(tmp_path, "$redis_server = 'tls://redis.example'; $redis_port = '6380';").redis
    assert (redis.host, redis.port, redis.tls) == ("redis.example", 6380, True)
    assert redis.address == "tls://redis.example:6380"


def test_redis_ipv6_address_display(tmp_path: Path) -> None:
    assert settings(tmp_path, "$redis_server = '::1';").redis.address == "[::1]:6379"


@pytest.mark.parametrize("port", ["0", "70000", "'http'"])
def test_redis_port_out_of_range(tmp_path: Path, port: str) -> None:
    with pytest.raises(ConfigError, match="redis_port"):
        load(tmp_path, REDIS + f"$redis_port = {port};")


def test_tls_without_host_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without a host"):
        load(tmp_path, "$redis_server = 'tls://';")


def test_password_from_environment(tmp_path: Path) -> None:
    body = REDIS + "$redis_password = '${REDIS_PASSWORD}';"
    redis = settings(tmp_path, body, environ={"REDIS_PASSWORD": "hunter2hunter2"}).redis
    assert redis.password.reveal() == "hunter2hunter2"
    assert redis.sends_auth


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    body = REDIS + "$redis_password = '${REDIS_PASSWORD}';"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, body)
    assert "REDIS_PASSWORD" in caught.value.reason
    assert caught.value.line == 3


def test_environment_reference_must_be_the_whole_string(tmp_path: Path) -> None:
    body = REDIS + "$redis_password = 'x${REDIS_PASSWORD}';"
    redis = settings(tmp_path, body, environ={"REDIS_PASSWORD": "nope"}).redis
    assert redis.password.reveal() == "x${REDIS_PASSWORD}"


def test_getenv_reads_the_environment(tmp_path: Path) -> None:
    body = REDIS + "$redis_password = getenv('RP');"
    assert settings(tmp_path, body, environ={"RP": "abc"}).redis.password.reveal() == "abc"
    # getenv() of an unset variable is false, which PHP turns into ''.
    assert not settings(tmp_path, body).redis.sends_auth


@pytest.mark.parametrize(("password", "sends"), [("''", False), ("'   '", False), ("'x'", True)])
def test_auth_only_for_a_non_blank_password(tmp_path: Path, password: str, sends: bool) -> None:
    body = REDIS + f"$redis_password = {password};"
    assert settings(tmp_path, body).redis.sends_auth is sends


# --- mail ------------------------------------------------------------------------------


def test_mail_defaults_to_sendmail(tmp_path: Path) -> None:
    mail = settings(tmp_path, "$sys_noreply = 'noreply@example.com';").mail
    assert (mail.transport, mail.can_send, mail.noreply) == (
        "sendmail",
        True,
        "noreply@example.com",
    )


def test_smtp_relay(tmp_path: Path) -> None:
    body = """
        $email_transport = 'smtp';
        $email_relayhost = 'relay.example:587';
        $email_relayhost_smtp_use_tls = 1;
        $email_relayhost_smtp_username = 'bob';
        $email_relayhost_smtp_password = 'pa55word';
        $email_relayhost_smtp_auth_type = 'login';
    """
    mail = settings(tmp_path, body).mail
    assert (mail.relay_host, mail.relay_port, mail.starttls, mail.implicit_tls) == (
        "relay.example",
        587,
        True,
        False,
    )
    assert (mail.username, mail.password.reveal(), mail.auth_type) == ("bob", "pa55word", "login")
    assert mail.can_send


@pytest.mark.parametrize(
    ("relayhost", "host", "port"),
    [("relay", "relay", 25), ("relay:", "relay", 25), ("[::1]:2525", "::1", 2525)],
)
def test_relayhost_forms(tmp_path: Path, relayhost: str, host: str, port: int) -> None:
    body = f"$email_transport = 'smtp'; $email_relayhost = '{relayhost}';"
    mail = settings(tmp_path, body).mail
    assert (mail.relay_host, mail.relay_port) == (host, port)


def test_smtp_without_relay_sends_nothing_and_says_so(tmp_path: Path) -> None:
    result = settings(tmp_path, "$email_transport = 'smtp';")
    assert not result.mail.can_send
    assert any("email_relayhost" in warning for warning in result.warnings)


def test_unknown_transport_sends_nothing_and_says_so(tmp_path: Path) -> None:
    result = settings(tmp_path, "$email_transport = 'pigeon';")
    assert not result.mail.can_send
    assert any("'pigeon'" in warning for warning in result.warnings)


def test_unknown_auth_type_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain' or 'login"):
        load(tmp_path, "$email_relayhost_smtp_auth_type = 'kerberos';")


# --- files -----------------------------------------------------------------------------


def test_later_file_wins_and_files_are_listed(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        REDIS + "$sys_nb_backend_workers = 3; $sys_logger_level = 'info';",
        "$sys_nb_backend_workers = 4;",
    )
    assert loaded.settings.backend_workers == 4
    assert loaded.settings.log_level is LogLevel.INFO
    assert [Path(f).name for f in loaded.settings.files] == ["file0.inc", "file1.inc"]


def test_each_file_has_its_own_variables(tmp_path: Path) -> None:
    # Tuleap includes each file inside a function: $a of local.inc is unknown in redis.inc.
    loaded = load(tmp_path, "$host = 'h1';", "$redis_server = $host;")
    assert not loaded.settings.redis.configured
    assert any("undefined variable $host" in str(d) for d in loaded.diagnostics)


def test_missing_file_is_an_error_unless_skipped(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.inc")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config([missing])
    assert load_config([missing], skip_missing=True).settings.files == ()


# --- secrets ---------------------------------------------------------------------------

SECRET = "correct-horse-battery-staple-0123456789"


def secret_config(tmp_path: Path) -> LoadedConfig:
    return load(
        tmp_path,
        REDIS
        + f"$redis_password = '{SECRET}';\n"
        + f"$email_relayhost_smtp_password = '{SECRET}x';\n"
        + f"$sys_dbpasswd = '{SECRET}y';",
    )


def test_repr_and_str_mask_passwords(tmp_path: Path) -> None:
    loaded = secret_config(tmp_path)
    for text in (repr(loaded.settings), str(loaded.settings), repr(loaded.settings.redis)):
        assert SECRET not in text
    assert "***" in repr(loaded.settings.redis)
    assert str(Secret("abc")) == "***"


def test_json_masks_passwords(tmp_path: Path) -> None:
    loaded = secret_config(tmp_path)
    document = json.dumps({"v": loaded.variables_json(), "s": loaded.settings.to_json()})
    assert SECRET not in document
    assert loaded.variables_json()["redis_password"] == "***"
    assert loaded.variables_json()["sys_dbpasswd"] == "***"


@pytest.mark.parametrize(
    "name",
    ["db_pass", "ldap_bind_pwd", "sys_api_key", "oauth_credentials", "mail_auth", "Sys_PassWord"],
)
def test_every_name_that_says_secret_is_masked_in_json(tmp_path: Path, name: str) -> None:
    """Issue 10, case 11: names were matched on passw(or)d, secret, token only."""
    loaded = load(tmp_path, REDIS + f"${name} = '{SECRET}';")
    assert loaded.variables_json()[name] == "***"


def test_mask_scrubs_foreign_text(tmp_path: Path) -> None:
    settings = secret_config(tmp_path).settings
    text = f"AUTH {SECRET} failed; relay said {SECRET}x"
    assert SECRET not in settings.mask(text)


def test_errors_never_show_a_string_value(tmp_path: Path) -> None:
    body = f"$redis_password = '{SECRET}' '{SECRET}';"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, body)
    assert SECRET not in str(caught.value)
    assert "expected ';'" in caught.value.reason


def test_example_config_reads_as_documented() -> None:
    loaded = load_config(
        [str(REPO / "config.example.php")],
        environ={"REDIS_PASSWORD": "p" * 32, "TULEAP_DB_PASSWORD": "d" * 32},
    )
    settings = loaded.settings
    assert settings.redis.address == "127.0.0.1:6379"
    assert settings.queue == "redis" and settings.queue_reason == "$tuitop_queue says so"
    assert settings.database.address == "mysql://tuleapadm@localhost:3306/tuleap"
    assert settings.database.password.reveal() == "d" * 32
    assert settings.redis.sends_auth
    assert settings.backend_workers == 2
    assert str(settings.async_scope) == "all"
    assert settings.log_level is LogLevel.WARNING
    assert settings.mail.transport == "sendmail"
    assert settings.lanes == LaneSet.parse(DEFAULT_SPEC)
    assert settings.warnings == ()


def test_lanes_default_to_tuleaps_long_topics_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load(tmp_path, "").settings.lanes == LaneSet.parse(DEFAULT_SPEC)
    assert load(tmp_path, "$tuitop_lanes = '';").settings.lanes == LaneSet()
    spec = "$tuitop_lanes = 'imports(2): tuleap.tracker.creation.jira';"
    lanes = load(tmp_path, spec).settings.lanes
    assert lanes.lane_of("tuleap.tracker.creation.jira") == "imports"
    assert lanes.plan(3) == ("imports", "imports", "latency_10s")
    assert load(tmp_path, spec).settings.to_json()["lanes"] == [
        {"name": "imports", "topics": ["tuleap.tracker.creation.jira"], "workers": 2}
    ]


def test_jobs_past_the_time_limit_are_retried_only_where_the_admin_says(
    tmp_path: Path,
) -> None:
    """Tuleap drops a job past its time limit; ``$tuitop_timeout_retries`` names the lanes
    and topics (globs) that get their tries again."""
    settings = load(tmp_path, "").settings
    assert not settings.retries_past_time_limit("tuleap.tracker.creation.jira")
    assert settings.to_json()["timeout_retries"] == []
    settings = load(
        tmp_path, "$tuitop_timeout_retries = 'latency_15m, tuleap.fts.* tuleap.git.hooks.?';"
    ).settings
    assert settings.retries_past_time_limit("tuleap.tracker.creation.jira")  # its lane
    assert settings.retries_past_time_limit("tuleap.fts.index-item")
    assert not settings.retries_past_time_limit("tuleap.tracker.artifact")
    assert not settings.retries_past_time_limit("tuleap.git.hooks.post-receive")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "\n$tuitop_timeout_retries = 'latency_15m; x';")
    assert caught.value.line == 3 and "$tuitop_timeout_retries: name 1" in str(caught.value)


def test_a_lane_spec_that_cannot_be_read_is_an_error_at_its_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "$sys_nb_backend_workers = 2;\n  $tuitop_lanes = 'long tuleap.x';")
    assert (caught.value.line, caught.value.column) == (3, 3)
    assert "$tuitop_lanes: lane 1: expected NAME(WORKERS)" in str(caught.value)
    assert "tuleap.x" not in str(caught.value)  # never a string's contents


def test_an_empty_file_is_refused_not_read_as_no_settings(tmp_path: Path) -> None:
    empty = tmp_path / "local.inc"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="the file is empty") as caught:
        load_config([str(empty)])
    assert (caught.value.path, caught.value.line) == (str(empty), 1)


# --- the database queue (Tuleap >= 15.9): database.inc and which queue -------------------

DATABASE = "$sys_dbhost = 'db.example.com'; $sys_dbuser = 'tuleapadm'; $sys_dbpasswd = 'pw';\n"


def test_database_inc_is_read_with_tuleaps_defaults(tmp_path: Path) -> None:
    chosen = settings(tmp_path, "$sys_dbpasswd = 's3cret';")
    assert chosen.queue == "db" and chosen.store is chosen.database
    database = chosen.database
    assert (database.host, database.port, database.name, database.user) == (
        "localhost",
        3306,
        "tuleap",
        "tuleapadm",
    )
    assert database.password.reveal() == "s3cret" and "s3cret" not in repr(chosen)
    assert "s3cret" in chosen.secrets()
    assert chosen.backend_workers == 2
    assert database.address == "mysql://tuleapadm@localhost:3306/tuleap"


def test_the_environment_overrides_database_inc_as_in_tuleap(tmp_path: Path) -> None:
    environ = {"TULEAP_SYS_DBHOST": "10.0.0.9", "TULEAP_SYS_DBPORT": "3307",
               "TULEAP_SYS_DBPASSWD": "from-env", "TULEAP_SYS_ENABLESSL": "1"}  # fmt: skip
    database = settings(tmp_path, DATABASE, environ).database
    assert (database.host, database.port, database.password.reveal(), database.tls) == (
        "10.0.0.9",
        3307,
        "from-env",
        True,
    )
    # Only the environment: no database.inc at all.
    assert settings(tmp_path, "", {"TULEAP_SYS_DBNAME": "forge"}).database.name == "forge"


FLAG_OFF = "$feature_flag_use_db_persisted_async_events_queue = 0;\n"


@pytest.mark.parametrize(
    ("body", "version", "queue"),
    [
        (REDIS, None, "redis"),  # the seed's Tuleap
        (DATABASE, None, "db"),  # today's Tuleap without Redis
        (REDIS + DATABASE, "17.4", "db"),  # Tuleap 17 keeps a Valkey for other uses
        (REDIS + DATABASE, "15.9.99.78", "db"),  # the Redis queue is gone (15.10)
        (REDIS + DATABASE, "15.9", "db"),  # the database's by default since 15.8
        (REDIS + DATABASE, "15.7.99.86", "db"),
        (REDIS + DATABASE, "15.7.99.85", "redis"),
        # 15.8 and 15.9's feature flag put the queue back in Redis, until 15.10
        (REDIS + DATABASE + FLAG_OFF, "15.9.99.77", "redis"),
        (REDIS + DATABASE + FLAG_OFF, "15.9.99.78", "db"),
        (REDIS + DATABASE + FLAG_OFF.replace("0", "'1'"), "15.9", "db"),
        (REDIS + DATABASE, None, "redis"),  # said in a warning
        (REDIS + DATABASE + "$tuitop_queue = 'db';", "14.0", "db"),
        (DATABASE + REDIS + "$tuitop_queue = 'Redis';", "17.4", "redis"),
        ("$tuitop_queue = 'db';", None, "db"),  # Tuleap's defaults: localhost, tuleap
    ],
)
def test_which_queue(tmp_path: Path, body: str, version: str | None, queue: str) -> None:
    version_file = tmp_path / "VERSION"
    if version is not None:
        version_file.write_text(version + "\n")
    path = tmp_path / "local.inc"
    path.write_text("<?php\n" + body)
    loaded = load_config([str(path)], environ={}, tuleap_version_file=str(version_file))
    assert loaded.settings.queue == queue
    assert loaded.settings.store.configured
    assert loaded.settings.queue_reason
    warned = any("$tuitop_queue" in warning for warning in loaded.settings.warnings)
    assert warned == (
        version is None and "$tuitop_queue" not in body and "redis" in body and "sys_db" in body
    )


def test_a_wrong_queue_name_or_port_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$tuitop_queue must be 'redis' or 'db'"):
        settings(tmp_path, "$tuitop_queue = 'rabbitmq';")
    with pytest.raises(ConfigError, match=r"\$sys_dbport must be a port number"):
        settings(tmp_path, DATABASE + "$sys_dbport = 70000;")
