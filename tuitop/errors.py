"""Errors that tuitop reports to its user (never as a Python traceback)."""

from __future__ import annotations


class ConfigError(Exception):
    """A config file that tuitop cannot use.

    ``path``, ``line`` and ``column`` (both 1-based) point at the place, as a compiler
    would; ``reason`` says what was expected there. ``str()`` gives
    ``path:line:column: reason``. The message never contains a secret's value: callers
    build ``reason`` from token kinds and variable names, not from string contents.
    """

    def __init__(self, path: str, line: int, column: int, reason: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {reason}")
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, int, int, str]]:
        # Picklable with its fields, so it can cross a process boundary intact.
        return (ConfigError, (self.path, self.line, self.column, self.reason))


class RedisServerError(Exception):
    """An embedded Redis server (:mod:`tuitop.embedded.redisserver`) that cannot be found
    or started.

    The message says which binary, port and directory were involved and, when the server
    did not start, ends with the tail of its log. It never contains the server's password.
    """
