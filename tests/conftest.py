"""Shared fixtures: a private Redis server and a recording SMTP server per test.

Each test gets servers of its own (a Redis start takes about 20 ms, a stop about 10 ms, so
no session-wide server is shared): no test sees another's keys or mails, and a test may
kill and restart its Redis freely. The ``*_factory`` fixtures make servers with options
(password, appendonly, slow or refusing SMTP, AUTH) and close them all after the test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.pool import Pool
from tests.tuleapdb import SERVER_VARIABLE, external_server, fresh_database
from tuitop.config import DatabaseSettings
from tuitop.embedded.mariadbserver import DatabaseServer, EmbeddedMariaDB
from tuitop.embedded.redisserver import EmbeddedRedis
from tuitop.embedded.smtpserver import SmtpServer

RedisServerFactory = Callable[..., EmbeddedRedis]
SmtpServerFactory = Callable[..., SmtpServer]


@pytest.fixture(autouse=True)
def tuitop_logger_restored() -> Iterator[None]:
    """The ``tuitop`` logger as it was before each test: a pool or worker set up in the
    test's own process (``setup_logging``) stops its propagation and gives it handlers,
    which would hide later tests' log lines from ``caplog`` in the same test process."""
    logger = logging.getLogger("tuitop")
    saved = (logger.propagate, list(logger.handlers), logger.level)
    yield
    logger.propagate, logger.level = saved[0], saved[2]
    for handler in [h for h in logger.handlers if h not in saved[1]]:
        logger.removeHandler(handler)


@pytest.fixture
def redis_server_factory() -> Iterator[RedisServerFactory]:
    """``make(**options)``: a started EmbeddedRedis(**options), closed after the test."""
    servers: list[EmbeddedRedis] = []

    def make(**options: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(**options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def redis_server(redis_server_factory: RedisServerFactory) -> EmbeddedRedis:
    """A started, empty Redis server for this test only (no password, no appendonly)."""
    return redis_server_factory()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A redis-py client of ``redis_server`` (replies as bytes)."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def smtp_server_factory() -> Iterator[SmtpServerFactory]:
    """``make(**options)``: a started SmtpServer(**options), stopped after the test."""
    servers: list[SmtpServer] = []

    def make(**options: Any) -> SmtpServer:
        server = SmtpServer(**options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: SmtpServerFactory) -> SmtpServer:
    """A started SMTP server that accepts everything at once, for this test only."""
    return smtp_server_factory()


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    """The real ``tuitop --no-ui`` processes a test starts (append them here); whatever is
    left running is killed afterwards, even when the test failed."""
    started: list[Pool] = []
    yield started
    for pool in started:
        pool.kill_all()


@pytest.fixture(scope="session")
def database_server() -> Iterator[DatabaseServer]:
    """The database server of the whole run: a private MariaDB (a start takes seconds),
    or the server ``TUITOP_TEST_DB`` names (tests/tuleapdb.py). Each test gets a database
    of its own on it (``database``). A test that kills its server makes its own
    (``mariadb_factory``)."""
    external = external_server()
    if external is not None:
        try:
            yield external
        finally:
            external.close()
        return
    server = EmbeddedMariaDB().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def database(database_server: DatabaseServer) -> DatabaseSettings:
    """A fresh database holding Tuleap's ``async_events``, as ``tuleapadm`` with a
    password (over TCP)."""
    return fresh_database(database_server)


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[[], EmbeddedMariaDB]]:
    """``make()``: a MariaDB server of this test's own, to kill and start again (skipped
    with ``TUITOP_TEST_DB``: a server of the admin's is never killed)."""
    if external_server() is not None:
        pytest.skip(f"kills and restarts a private MariaDB: not run with {SERVER_VARIABLE}")
    servers: list[EmbeddedMariaDB] = []

    def make() -> EmbeddedMariaDB:
        server = EmbeddedMariaDB()
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


E2E_FIXTURES = frozenset({"pools", "terminal"})
"""A test that asks for one of these runs real pools (``tuitop --no-ui``) or the real UI in
a terminal, and waits on them and on the wall clock."""
E2E_MODULES = frozenset({"test_chaos"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``e2e`` the tests that wait on real pools, terminals and clocks: ``pytest -m
    "not e2e" -n 4`` is a developer's fast loop, ``.ci/run`` runs everything."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) or module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
