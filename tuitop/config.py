"""Tuleap's config files → one frozen, typed :class:`Settings`.

The files are read with :mod:`tuitop.phpreader` (PHP's own semantics), merged as Tuleap
merges them (a later file wins), and the variables tuitop uses are turned into settings by
the rules Tuleap applies (``../shared/tuleap-compat.md``). Every problem is a
:class:`~tuitop.errors.ConfigError` pointing at the file, line and column of the
assignment at fault; passwords never appear in a ``repr``, a ``str`` or an error.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tuitop.errors import ConfigError
from tuitop.lanes import DEFAULT_LANE, DEFAULT_SPEC, LaneSet, TopicChoice
from tuitop.phpreader import (
    Diagnostic,
    Origin,
    PhpInterpreter,
    PhpValue,
    to_php_bool,
    to_php_int,
    to_php_string,
)

__all__ = [
    "DEFAULT_CONFIG_FILES",
    "AsyncScope",
    "ConfigError",
    "DatabaseSettings",
    "LoadedConfig",
    "LogLevel",
    "MailSettings",
    "RedisSettings",
    "Secret",
    "Settings",
    "load_config",
]

DEFAULT_CONFIG_FILES = (
    "/etc/tuleap/conf/local.inc",
    "/etc/tuleap/conf/database.inc",
    "/etc/tuleap/conf/redis.inc",
)
"""Tuleap's own order (ForgeConfig::loadInSequence): local.inc, database.inc, redis.inc."""
DEFAULT_REDIS_PORT = 6379
DEFAULT_DB_PORT = 3306
TULEAP_VERSION_FILE = "/usr/share/tuleap/VERSION"
DB_QUEUE_SINCE = (15, 7, 99, 86)
"""The Tuleap release whose queue is the database's ``async_events`` table (58f6ee073c7,
shipped in 15.8), unless ``$feature_flag_use_db_persisted_async_events_queue = 0`` kept
Redis's until :data:`REDIS_QUEUE_GONE`."""
REDIS_QUEUE_GONE = (15, 9, 99, 78)
"""The Tuleap release that deleted the Redis queue (2f14d9d9907, shipped in 15.10)."""
DB_QUEUE_FLAG = "feature_flag_use_db_persisted_async_events_queue"
"""Tuleap 15.8 and 15.9's switch back to Redis (``ForgeConfig::getFeatureFlag``: 1 by
default, ``(int)`` of the value)."""
REDIS_QUEUE = "redis"
DB_QUEUE = "db"
QUEUE_KINDS = (REDIS_QUEUE, DB_QUEUE)
DEFAULT_WORKERS = 2
DEFAULT_SMTP_PORT = 25
# More workers than this on one host is a typo, not a plan; refuse it before forking.
MAX_WORKERS = 1024
MASK = "***"

_ENV_REFERENCE = re.compile(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PHP_TRIM = b" \t\n\r\0\x0b"
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|credential|auth(?!_type$)", re.IGNORECASE)
"""Names of variables whose values are never shown: masking too much is harmless, but
for a kind of authentication (``$email_relayhost_smtp_auth_type``: ``plain``, ``login``),
which can be no secret."""


def is_secret_variable(name: str) -> bool:
    """True for variables whose value is never shown (passwords, secrets, tokens)."""
    return _SECRET_NAME.search(name) is not None


class Secret:
    """A string that shows as ``***`` everywhere; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self._value else "Secret('')"

    def __str__(self) -> str:
        return MASK if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class LogLevel(enum.IntEnum):
    """``$sys_logger_level``; the numbers are :mod:`logging`'s, so they compare the same."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40

    def __str__(self) -> str:
        return self.name.lower()


_LOG_LEVEL_NAMES = {
    "debug": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "warning": LogLevel.WARNING,
    "warn": LogLevel.WARNING,
    "error": LogLevel.ERROR,
}


@dataclass(frozen=True)
class AsyncScope:
    """Which projects' notifications go through the queue (``$sys_async_emails``)."""

    all_projects: bool = False
    project_ids: frozenset[int] = frozenset()

    @property
    def enabled(self) -> bool:
        """True when at least one project's notifications are sent by the workers."""
        return self.all_projects or bool(self.project_ids)

    def covers(self, project_id: int) -> bool:
        return self.all_projects or project_id in self.project_ids

    def __str__(self) -> str:
        if self.all_projects:
            return "all"
        if not self.project_ids:
            return "none"
        return ",".join(str(project) for project in sorted(self.project_ids))

    @classmethod
    def parse(cls, text: str) -> AsyncScope:
        """The inverse of ``str()``: ``none``, ``all`` or ``X,Y,Z``."""
        if text == "all":
            return cls(all_projects=True)
        if text in ("none", ""):
            return cls()
        return cls(project_ids=frozenset(int(item) for item in text.split(",")))


@dataclass(frozen=True)
class RedisSettings:
    """Where the queue lives. ``host == ''`` means Redis is not configured."""

    host: str = ""
    port: int = DEFAULT_REDIS_PORT
    password: Secret = field(default_factory=lambda: Secret(""))
    tls: bool = False

    kind = REDIS_QUEUE
    noun = "Redis"
    """What a sentence calls it."""

    @property
    def configured(self) -> bool:
        return self.host != ""

    @property
    def sends_auth(self) -> bool:
        """Tuleap sends AUTH only when the trimmed password is not empty."""
        return self.password.reveal().strip() != ""

    @property
    def address(self) -> str:
        """``host:port`` (``tls://host:port`` with TLS), for display: no password."""
        if not self.configured:
            return "(not configured)"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls://' if self.tls else ''}{host}:{self.port}"


@dataclass(frozen=True)
class DatabaseSettings:
    """Tuleap's database (``database.inc``), where Tuleap ≥ 15.8 keeps its queue.
    ``host == ''`` means it is not configured."""

    host: str = ""
    port: int = DEFAULT_DB_PORT
    name: str = "tuleap"
    user: str = "tuleapadm"
    password: Secret = field(default_factory=lambda: Secret(""))
    tls: bool = False
    """``$sys_enablessl`` is '1': TLS to the server."""
    tls_ca: str = ""
    """``$sys_db_ssl_ca``: the CA file the server's certificate is checked against."""
    tls_verify: bool = False
    """``$sys_db_ssl_verify_cert`` is '1': the certificate's host name is checked too."""

    kind = DB_QUEUE
    noun = "the database"
    """What a sentence calls it."""

    @property
    def configured(self) -> bool:
        return self.host != ""

    @property
    def address(self) -> str:
        """``mysql://user@host:port/name`` for display: no password."""
        if not self.configured:
            return "(not configured)"
        host = f"[{self.host}]" if ":" in self.host else self.host
        tls = "+tls" if self.tls else ""
        return f"mysql{tls}://{self.user}@{host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class MailSettings:
    """How notification mails leave: ``$email_transport`` and the relay settings."""

    transport: str = "sendmail"
    noreply: str = ""
    relay_host: str = ""
    relay_port: int = DEFAULT_SMTP_PORT
    starttls: bool = False
    implicit_tls: bool = False
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    auth_type: str = "plain"

    @property
    def can_send(self) -> bool:
        """False when Tuleap would send nothing (unknown transport, smtp without relay)."""
        if self.transport == "sendmail":
            return True
        return self.transport == "smtp" and self.relay_host != ""

    def describe(self) -> str:
        if self.transport == "sendmail":
            return "sendmail"
        if self.transport != "smtp":
            return f"{self.transport!r} (unknown: no mail is sent)"
        if not self.relay_host:
            return "smtp without a relay host (no mail is sent)"
        parts = [f"smtp via {self.relay_host}:{self.relay_port}"]
        if self.implicit_tls:
            parts.append("TLS")
        elif self.starttls:
            parts.append("STARTTLS")
        if self.username:
            parts.append(f"{self.auth_type} auth as {self.username}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Frozen: a reload builds a new one."""

    redis: RedisSettings = field(default_factory=RedisSettings)
    backend_workers: int = 0
    async_scope: AsyncScope = field(default_factory=AsyncScope)
    log_level: LogLevel = LogLevel.WARNING
    mail: MailSettings = field(default_factory=MailSettings)
    lanes: LaneSet = field(default_factory=lambda: LaneSet.parse(DEFAULT_SPEC))
    """``$tuitop_lanes``: which topics have workers of their own (:mod:`tuitop.lanes`)."""
    timeout_retries: TopicChoice = field(default_factory=TopicChoice)
    """``$tuitop_timeout_retries``: the lanes and topics whose jobs are retried when they
    ran past the time limit; none by default — Tuleap drops such a job."""
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    queue: str = REDIS_QUEUE
    """Where the queue is: ``redis`` (Tuleap < 15.8, the seed's) or ``db`` (Tuleap's
    ``async_events`` table); see ``_SettingsBuilder.queue``."""
    queue_reason: str = ""
    """Why this queue, said by ``tuitop config``."""

    @property
    def store(self) -> StoreSettings:
        """The settings of the server the queue is on (the Redis or the database)."""
        return self.database if self.queue == DB_QUEUE else self.redis

    def retries_past_time_limit(self, topic: str) -> bool:
        """Whether a job of ``topic`` killed at the time limit is tried again (else it is
        dead-lettered at once, as Tuleap drops it)."""
        return self.timeout_retries.covers(topic, self.lanes)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in force, for scrubbing text that came from elsewhere."""
        values = (
            self.redis.password.reveal(),
            self.database.password.reveal(),
            self.mail.password.reveal(),
        )
        return tuple(value for value in values if value)

    def mask(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        return mask_secrets(text, self.secrets())

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready data, passwords masked."""
        return {
            "redis": {
                "configured": self.redis.configured,
                "host": self.redis.host,
                "port": self.redis.port,
                "tls": self.redis.tls,
                "password": str(self.redis.password),
                "address": self.redis.address,
            },
            "queue": {
                "kind": self.queue,
                "address": self.store.address,
                "why": self.queue_reason,
            },
            "database": {
                "configured": self.database.configured,
                "host": self.database.host,
                "port": self.database.port,
                "name": self.database.name,
                "user": self.database.user,
                "password": str(self.database.password),
                "tls": self.database.tls,
                "tls_ca": self.database.tls_ca,
                "tls_verify": self.database.tls_verify,
                "address": self.database.address,
            },
            "backend_workers": self.backend_workers,
            "async_scope": str(self.async_scope),
            "log_level": str(self.log_level),
            "mail": {
                "transport": self.mail.transport,
                "noreply": self.mail.noreply,
                "relay_host": self.mail.relay_host,
                "relay_port": self.mail.relay_port,
                "starttls": self.mail.starttls,
                "implicit_tls": self.mail.implicit_tls,
                "username": self.mail.username,
                "password": str(self.mail.password),
                "auth_type": self.mail.auth_type,
                "can_send": self.mail.can_send,
            },
            "lanes": [
                {
                    "name": lane.name,
                    "topics": list(lane.topics),
                    "workers": None
                    if lane.name == DEFAULT_LANE
                    else f"{lane.workers}%"
                    if lane.percent
                    else lane.workers,
                }
                for lane in self.lanes.lanes
            ],
            "timeout_retries": list(self.timeout_retries.names),
            "files": list(self.files),
            "warnings": list(self.warnings),
        }


StoreSettings = RedisSettings | DatabaseSettings
"""Where a queue lives: what connects to it, and ``address``/``configured``/``kind``."""


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every place a secret occurs replaced by ``***``."""
    return mask_spans(text, list(secrets), MASK)


_Text = TypeVar("_Text", str, bytes)


def secret_spans(text: _Text, secrets: Sequence[_Text]) -> list[tuple[int, int]]:
    """Where ``secrets`` occur in ``text``, as (start, end) in order, spans that overlap
    or touch merged: secrets that share characters (one inside another, one's end another's
    start) make one span."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if not secret:
            continue
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for begin, end in spans:
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def mask_spans(text: _Text, secrets: Sequence[_Text], mask: _Text) -> _Text:
    """Replaces by ``mask`` every span of ``text`` where secrets occur (secret_spans):
    never one secret leaving a piece of another."""
    spans = secret_spans(text, secrets)
    if not spans:
        return text
    pieces: list[_Text] = []
    last = 0
    for begin, end in spans:
        pieces += [text[last:begin], mask]
        last = end
    pieces.append(text[last:])
    return text[:0].join(pieces)


@dataclass(frozen=True)
class LoadedConfig:
    """The result of reading the files: the settings and the raw PHP variables."""

    settings: Settings
    variables: Mapping[str, PhpValue]
    origins: Mapping[str, Origin]
    diagnostics: tuple[Diagnostic, ...]

    def variables_json(self) -> dict[str, Any]:
        """Every variable with its PHP value as JSON data; secrets shown as ``***``: those
        of a secret's name, and any holding a password in force whatever its name
        (``$db_pw = '…'; $sys_dbpasswd = $db_pw;``)."""
        secrets = self.settings.secrets()
        shown: dict[str, Any] = {}
        for name, value in self.variables.items():
            data = php_value_json(value)
            if (is_secret_variable(name) and value) or (
                isinstance(data, str) and mask_secrets(data, secrets) != data
            ):
                data = MASK
            shown[name] = data
        return shown


def php_value_json(value: PhpValue) -> Any:
    """A PHP value as JSON data (non-finite floats as PHP writes them: ``INF``, ``NAN``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float) and not math.isfinite(value):
        return to_php_string(value).decode()
    return value


def load_config(
    paths: Sequence[str],
    *,
    skip_missing: bool = False,
    environ: Mapping[str, str] | None = None,
    tuleap_version_file: str = TULEAP_VERSION_FILE,
) -> LoadedConfig:
    """Reads ``paths`` in order and builds the settings.

    With ``skip_missing`` a file that does not exist is passed over (as Tuleap does with
    its default files); otherwise it is an error. ``tuleap_version_file`` says which
    Tuleap runs here, when the files name both a Redis and a database (see
    ``_SettingsBuilder.queue``). Raises ConfigError, never anything else for a problem in
    the files.
    """
    environment = os.environ if environ is None else environ
    interpreter = PhpInterpreter(environment)
    variables: dict[str, PhpValue] = {}
    origins: dict[str, Origin] = {}
    diagnostics: list[Diagnostic] = []
    loaded: list[str] = []
    for path in paths:
        if skip_missing and not os.path.exists(path):
            continue
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            # PHP would read it as "no variables", but an empty config file is a save caught
            # halfway or a mistake, never a config: keep the one in force.
            raise ConfigError(path, 1, 1, "the file is empty (still being written?)")
        scope = interpreter.run_file(path)
        variables.update(scope.variables)
        origins.update(scope.origins)
        diagnostics.extend(scope.warnings)
        loaded.append(path)
    builder = _SettingsBuilder(variables, origins, environment, tuple(loaded))
    builder.tuleap_version = read_tuleap_version(tuleap_version_file)
    settings = builder.build()
    return LoadedConfig(settings, variables, origins, tuple(diagnostics))


class _SettingsBuilder:
    """Applies Tuleap's rules to the merged variables."""

    def __init__(
        self,
        variables: Mapping[str, PhpValue],
        origins: Mapping[str, Origin],
        environ: Mapping[str, str],
        files: tuple[str, ...],
    ) -> None:
        self.variables = variables
        self.origins = origins
        self.environ = environ
        self.files = files
        self.warnings: list[str] = []
        self.tuleap_version: tuple[int, ...] | None = None

    def error(self, name: str, reason: str) -> ConfigError:
        origin = self.origins.get(name)
        if origin is None:
            return ConfigError(self.files[-1] if self.files else "(no file)", 0, 0, reason)
        return ConfigError(origin.path, origin.line, origin.column, reason)

    def warn(self, name: str, message: str) -> None:
        origin = self.origins.get(name)
        where = f"{origin.path}:{origin.line}:{origin.column}: " if origin else ""
        self.warnings.append(f"{where}{message}")

    def value(self, name: str) -> PhpValue:
        """The variable's value, ``${ENV}`` resolved; None when unset (as PHP's isset)."""
        value = self.variables.get(name)
        if isinstance(value, bytes):
            match = _ENV_REFERENCE.fullmatch(value)
            if match is not None:
                env_name = match.group(1).decode()
                if env_name not in self.environ:
                    raise self.error(
                        name,
                        f"${name} reads the environment variable {env_name}, which is not set",
                    )
                return self.environ[env_name].encode("utf-8", "surrogateescape")
        return value

    def text(self, name: str, default: str = "") -> str:
        value = self.value(name)
        if value is None:
            return default
        return to_php_string(value).decode("utf-8", "surrogateescape")

    def integer(self, name: str, default: int) -> int:
        value = self.value(name)
        return default if value is None else to_php_int(value)

    def build(self) -> Settings:
        redis = self.redis()
        database = self.database()
        queue, why = self.queue(redis, database)
        if queue == DB_QUEUE and not database.configured:
            database = self.database(forced=True)
        scope = self.async_scope()
        store = database if queue == DB_QUEUE else redis
        return Settings(
            redis=redis,
            database=database,
            queue=queue,
            queue_reason=why,
            backend_workers=self.backend_workers(store, scope),
            async_scope=scope,
            log_level=self.log_level(),
            mail=self.mail(),
            lanes=self.lanes(),
            timeout_retries=self.timeout_retries(),
            files=self.files,
            warnings=tuple(self.warnings),
        )

    def redis(self) -> RedisSettings:
        host = self.text("redis_server")
        tls = host.startswith("tls://")
        if tls:
            host = host[len("tls://") :]
            if not host:
                raise self.error("redis_server", "$redis_server is 'tls://' without a host")
        port = self.integer("redis_port", DEFAULT_REDIS_PORT)
        if not 1 <= port <= 65535:
            raise self.error(
                "redis_port", f"$redis_port must be a port number (1-65535), not {port}"
            )
        return RedisSettings(host, port, Secret(self.text("redis_password")), tls)

    def database(self, *, forced: bool = False) -> DatabaseSettings:
        """``database.inc``'s variables, each overridden by ``TULEAP_`` + its upper-cased
        name in the environment, as Tuleap's DBConfig reads them. Configured when any of
        them is set (or ``forced``: ``$tuitop_queue = 'db'``), with Tuleap's defaults."""
        names = ("sys_dbhost", "sys_dbport", "sys_dbname", "sys_dbuser", "sys_dbpasswd",
                 "sys_enablessl", "sys_db_ssl_ca", "sys_db_ssl_verify_cert")  # fmt: skip
        present = {name: self.db_value(name) for name in names}
        if not forced and all(value is None for value in present.values()):
            return DatabaseSettings()

        def text(name: str, default: str) -> str:
            value = present[name]
            return default if value is None else to_php_string(value).decode("utf-8", "replace")

        host = text("sys_dbhost", "localhost").strip() or "localhost"
        port_value = present["sys_dbport"]
        port = DEFAULT_DB_PORT if port_value is None else to_php_int(port_value)
        if not 1 <= port <= 65535:
            raise self.error(
                "sys_dbport", f"$sys_dbport must be a port number (1-65535), not {port}"
            )
        return DatabaseSettings(
            host=host,
            port=port,
            name=text("sys_dbname", "tuleap"),
            user=text("sys_dbuser", "tuleapadm"),
            password=Secret(text("sys_dbpasswd", "")),
            # Tuleap's DBConfig compares with '1', as a string, for both.
            tls=text("sys_enablessl", "0").strip() == "1",
            tls_ca=text("sys_db_ssl_ca", ""),
            tls_verify=text("sys_db_ssl_verify_cert", "0").strip() == "1",
        )

    def db_value(self, name: str) -> PhpValue:
        """A database variable: the environment's ``TULEAP_<NAME>`` wins over the files
        (Tuleap loads it after database.inc)."""
        override = self.environ.get("TULEAP_" + name.upper())
        if override is not None:
            return override.encode("utf-8", "surrogateescape")
        return self.value(name)

    def queue(self, redis: RedisSettings, database: DatabaseSettings) -> tuple[str, str]:
        """Which queue to serve, and why. ``$tuitop_queue`` (``'redis'`` or ``'db'``) says
        it; unset, the one the files configure; when they configure both (Tuleap ≥ 15.8
        keeps a Redis — Valkey — for other uses), Tuleap's version decides: from 15.7.99.86
        on, its queue is the database's (unless Tuleap's feature flag kept Redis's, up to
        15.9.99.78, which deleted it); with no version to read, Redis (the seed's Tuleap),
        with a warning."""
        explicit = self.text("tuitop_queue").strip().lower()
        if explicit:
            if explicit not in QUEUE_KINDS:
                raise self.error(
                    "tuitop_queue", "$tuitop_queue must be 'redis' or 'db' (Tuleap's database)"
                )
            return explicit, "$tuitop_queue says so"
        if redis.configured and not database.configured:
            return REDIS_QUEUE, "$redis_server is set and no database is configured"
        if database.configured and not redis.configured:
            return DB_QUEUE, "a database is configured and $redis_server is empty"
        if not database.configured:
            return REDIS_QUEUE, "neither a Redis nor a database is configured"
        version = self.tuleap_version
        if version is not None:
            shown = ".".join(str(part) for part in version)
            flag = self.value(DB_QUEUE_FLAG)
            if version < REDIS_QUEUE_GONE and flag is not None and to_php_int(flag) != 1:
                return REDIS_QUEUE, f"Tuleap {shown} keeps its queue in Redis (${DB_QUEUE_FLAG})"
            if version >= DB_QUEUE_SINCE:
                return DB_QUEUE, f"Tuleap {shown} keeps its queue in its database"
            return REDIS_QUEUE, f"Tuleap {shown} keeps its queue in Redis"
        self.warn(
            "redis_server",
            "both $redis_server and a database are configured and no Tuleap version could be "
            "read: serving the Redis queue; set $tuitop_queue = 'db' for Tuleap ≥ 15.8",
        )
        return REDIS_QUEUE, "both are configured; Redis, as no Tuleap version says otherwise"

    def async_scope(self) -> AsyncScope:
        # Tuleap: switch ($value) { case 'all': ...; case false: ...; default: explode }
        # with PHP's loose comparisons, so true means 'all' and '0', 0 and '' mean none.
        value = self.value("sys_async_emails")
        if value == b"all" or value is True:
            return AsyncScope(all_projects=True)
        if not to_php_bool(value):
            return AsyncScope()
        project_ids = set()
        for item in to_php_string(value).split(b","):
            trimmed = item.strip(_PHP_TRIM)
            project_ids.add(to_php_int(trimmed))
            if not re.fullmatch(rb"[+-]?[0-9]+", trimmed):
                shown = trimmed.decode("utf-8", "replace")
                self.warn(
                    "sys_async_emails",
                    f"$sys_async_emails item {shown!r} is not a project id; "
                    f"it reads as {to_php_int(trimmed)}, as in Tuleap",
                )
        return AsyncScope(project_ids=frozenset(project_ids))

    def backend_workers(self, store: StoreSettings, scope: AsyncScope) -> int:
        if not store.configured:
            return 0
        count = abs(self.integer("sys_nb_backend_workers", DEFAULT_WORKERS))
        if scope.enabled:
            count = max(count, 1)  # async notifications need at least one worker
        if count > MAX_WORKERS:
            raise self.error(
                "sys_nb_backend_workers",
                f"$sys_nb_backend_workers asks for {count} workers; "
                f"tuitop runs at most {MAX_WORKERS} per host",
            )
        return count

    def log_level(self) -> LogLevel:
        value = self.value("sys_logger_level")
        if value is None:
            return LogLevel.WARNING
        name = to_php_string(value).decode("utf-8", "replace").strip().lower()
        if not isinstance(value, bytes) or name not in _LOG_LEVEL_NAMES:
            raise self.error(
                "sys_logger_level",
                f"$sys_logger_level must be one of 'debug', 'info', 'warning' (or 'warn'), "
                f"'error'; it is {name!r}",
            )
        return _LOG_LEVEL_NAMES[name]

    def lanes(self) -> LaneSet:
        value = self.value("tuitop_lanes")
        spec = DEFAULT_SPEC if value is None else self.text("tuitop_lanes")
        try:
            lanes = LaneSet.parse(spec)
        except ValueError as error:
            raise self.error("tuitop_lanes", f"$tuitop_lanes: {error}") from None
        for warning in lanes.never_matched():
            self.warn("tuitop_lanes", f"$tuitop_lanes: {warning}")
        return lanes

    def timeout_retries(self) -> TopicChoice:
        try:
            return TopicChoice.parse(self.text("tuitop_timeout_retries"))
        except ValueError as error:
            raise self.error(
                "tuitop_timeout_retries", f"$tuitop_timeout_retries: {error}"
            ) from None

    def mail(self) -> MailSettings:
        transport = self.text("email_transport", "sendmail")
        relayhost = self.text("email_relayhost").strip()
        host, port = _split_relayhost(relayhost)
        if not 1 <= port <= 65535:
            raise self.error("email_relayhost", f"$email_relayhost has port {port}, not 1-65535")
        auth_type = self.text("email_relayhost_smtp_auth_type", "plain").strip().lower()
        if auth_type not in ("plain", "login"):
            raise self.error(
                "email_relayhost_smtp_auth_type",
                f"$email_relayhost_smtp_auth_type must be 'plain' or 'login', not {auth_type!r}",
            )
        noreply = self.text("sys_noreply")
        if transport not in ("sendmail", "smtp"):
            self.warn(
                "email_transport",
                f"$email_transport is {transport!r}, neither 'sendmail' nor 'smtp': "
                "no mail will be sent",
            )
        elif transport == "smtp" and not host:
            self.warn("email_transport", "$email_transport is 'smtp' but $email_relayhost is empty")
        if not noreply:
            self.warn("sys_noreply", "$sys_noreply is not set: mails go out without a From")
        return MailSettings(
            transport=transport,
            noreply=noreply,
            relay_host=host,
            relay_port=port,
            starttls=self.integer("email_relayhost_smtp_use_tls", 0) != 0,
            implicit_tls=self.integer("email_relayhost_smtp_use_implicit_tls", 0) != 0,
            username=self.text("email_relayhost_smtp_username"),
            password=Secret(self.text("email_relayhost_smtp_password")),
            auth_type=auth_type,
        )


def read_tuleap_version(path: str) -> tuple[int, ...] | None:
    """Tuleap's version from its VERSION file (``17.4``, ``15.9.99.78``), or None."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read(64).strip()
    except OSError:
        return None
    parts = text.split(".")
    if not text or not all(part.isascii() and part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def _split_relayhost(relayhost: str) -> tuple[str, int]:
    """``host:port`` → (host, port); no or an empty port means 25, as in Tuleap."""
    if relayhost.startswith("["):  # [IPv6]:port
        host, _, rest = relayhost[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif relayhost.count(":") == 1:
        host, _, port_text = relayhost.partition(":")
    else:
        host, port_text = relayhost, ""
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else DEFAULT_SMTP_PORT
    return host, port
