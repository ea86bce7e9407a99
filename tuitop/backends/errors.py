"""tuitop's own errors of a store, which every backend raises in place of its driver's.

The pool, the workers, the views and the CLI catch these, never ``redis`` or
``pymysql``'s: each backend turns its driver's error into one of them at its edge (as
dramatiq's Redis broker turns ``redis.ConnectionError`` into its own ``ConnectionClosed``),
so a rule about a store's failure — back off, retry the write, say it to the operator —
is written once, above every backend. The message is one line an operator can act on;
no password is ever in it. The driver's error is kept as ``__cause__``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar


class StoreError(Exception):
    """The store answered, and refused what was asked (one statement): the link is up,
    the next try may go through (a database's lock wait timed out, a key of the wrong
    type)."""


class StoreUnavailable(StoreError):
    """The store does not answer (unreachable, connection lost, a reply that did not
    come in time): a pool backs off and tries again; nothing moved unless
    :class:`MaybeWritten` says it may have."""


class CredentialsRefused(StoreUnavailable):
    """The store refused the credentials (or wants some and got none): a worker stops at
    once rather than retry, its pool says which setting to fix."""


class MaybeWritten(StoreUnavailable):
    """The request was sent, and its reply lost or late: the write may have landed (a
    producer asks before it pushes again)."""


_Class = TypeVar("_Class", bound=type)


def at_the_edge(
    driver_errors: tuple[type[BaseException], ...],
    translate: Callable[[Any, BaseException], StoreError],
) -> Callable[[_Class], _Class]:
    """A class decorator: every public method of the class (its own and inherited)
    raises ``translate(self, error)`` from any of ``driver_errors``. Properties, private
    methods and what is already a StoreError pass unchanged."""

    def decorate(cls: _Class) -> _Class:
        for name in dir(cls):
            if name.startswith("_"):
                continue
            method = inspect.getattr_static(cls, name)
            if inspect.isfunction(method):
                setattr(cls, name, _translating(method, driver_errors, translate))
        return cls

    return decorate


def _translating(
    method: Callable[..., Any],
    driver_errors: tuple[type[BaseException], ...],
    translate: Callable[[Any, BaseException], StoreError],
) -> Callable[..., Any]:
    @functools.wraps(method)
    def translated(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except driver_errors as error:
            raise translate(self, error) from error

    return translated
