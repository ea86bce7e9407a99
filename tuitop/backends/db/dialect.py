"""What differs between the servers Tuleap's database runs on: MySQL 8.0/8.4, MariaDB ≥ 10.6.

Tuleap ≥ 16.2 runs on MySQL 8.0 or 8.4 only (its ``sanity-check`` refuses MariaDB); older
forges, and tuitop's own tests here, run MariaDB. Nearly every statement tuitop sends is
the same on both; the few that are not are chosen once per connection by the server's
flavour and version, read from its handshake (:meth:`Dialect.of`). ``docs/database.md``
lists each decision with the section of MySQL's and MariaDB's manuals it rests on.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MARIADB, MYSQL = "mariadb", "mysql"
ROW_ALIAS_SINCE = (8, 0, 19)
"""MySQL accepts ``INSERT … VALUES … AS alias ON DUPLICATE KEY UPDATE`` from 8.0.19, and
deprecates ``VALUES(col)`` there from 8.0.20 (a warning each statement)."""
NEW_ROW = "tuitop_new"
"""How an upsert names the row it would have inserted (``tuitop_new.count``)."""
_NEW_COLUMN = re.compile(rf"\b{NEW_ROW}\.(\w+)")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_UPDATE = " ON DUPLICATE KEY UPDATE "


@dataclass(frozen=True)
class Dialect:
    """A server's flavour and version, and the SQL that differs for it."""

    flavour: str
    version: tuple[int, int, int]

    @classmethod
    def of(cls, server_version: str) -> Dialect:
        """From the version a server says in its handshake: ``8.4.3``, ``8.0.36-28``
        (Percona), ``10.11.6-MariaDB-0+deb12u1``, ``5.5.5-10.6.18-MariaDB`` (MariaDB
        before 11, behind the prefix it kept for old replication clients)."""
        flavour = MARIADB if "mariadb" in server_version.lower() else MYSQL
        text = server_version
        if flavour == MARIADB and text.startswith("5.5.5-"):
            text = text[len("5.5.5-") :]
        match = _VERSION.search(text)
        version = (0, 0, 0)
        if match:
            version = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
        return cls(flavour, version)

    @property
    def is_mysql(self) -> bool:
        return self.flavour == MYSQL

    @property
    def ends_idle_transactions(self) -> bool:
        """Whether the server ends a transaction whose client went silent by itself
        (MariaDB's ``idle_transaction_timeout``, 10.3+); MySQL has no such setting, and
        tuitop shortens the session's ``wait_timeout`` instead (:mod:`.connection`)."""
        return self.flavour == MARIADB and self.version >= (10, 3, 0)

    def upsert(self, statement: str) -> str:
        """``statement`` — ``INSERT … VALUES … ON DUPLICATE KEY UPDATE …`` naming the row
        it would insert ``tuitop_new.col`` — as this server reads it: a row alias on
        MySQL ≥ 8.0.19, ``VALUES(col)`` elsewhere (MariaDB has no row alias)."""
        return _upsert(statement, self.is_mysql and self.version >= ROW_ALIAS_SINCE)

    def describe(self) -> str:
        name = "MariaDB" if self.flavour == MARIADB else "MySQL"
        return f"{name} {'.'.join(map(str, self.version))}"


@functools.cache
def _upsert(statement: str, row_alias: bool) -> str:
    head, update, tail = statement.partition(_UPDATE)
    if not update:
        raise ValueError("not an INSERT … ON DUPLICATE KEY UPDATE")
    if row_alias:
        return f"{head} AS {NEW_ROW}{update}{tail}"
    return head + update + _NEW_COLUMN.sub(r"VALUES(\1)", tail)
