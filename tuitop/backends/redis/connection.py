"""Connections to the queue's Redis, built from Settings, and errors said plainly."""

from __future__ import annotations

from typing import Any

import redis
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tuitop.backends.base import CONNECT_TIMEOUT, ErrorTypes
from tuitop.backends.errors import (
    CredentialsRefused,
    MaybeWritten,
    StoreError,
    StoreUnavailable,
)
from tuitop.config import RedisSettings, mask_secrets

try:
    from redis.driver_info import DriverInfo
except ImportError:  # redis-py < 7.1 reads its version once, at its own import
    _IDENTITY: dict[str, Any] = {}
else:
    # What a client tells Redis of itself (CLIENT SETINFO): by default each new client
    # reads redis-py's version from the installed packages' metadata, a scan of sys.path
    # (milliseconds) that a new worker would pay before its first command. Read once here,
    # in the forkserver that starts the workers.
    _IDENTITY = {"driver_info": DriverInfo()}


def connect(
    settings: RedisSettings,
    *,
    client_name: str | None = None,
    socket_timeout: float | None = 30.0,
) -> Redis:
    """A client for ``settings`` (AUTH only when the password is not blank, as Tuleap).

    Nothing is sent until the first command. ``socket_timeout`` must exceed the timeout of
    any blocking command sent on this client. A failed command is not retried: it may have
    run (a timeout after Redis did the work), and running a take or a push twice would
    duplicate messages. The error reaches the caller, whose back-off says so in the log.
    """
    return Redis(
        host=settings.host,
        port=settings.port,
        password=settings.password.reveal() if settings.sends_auth else None,
        ssl=settings.tls,
        client_name=client_name,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
        **_IDENTITY,
    )


def is_auth_error(error: BaseException) -> bool:
    """True when Redis refused the credentials (or wants some and got none)."""
    if isinstance(error, redis.AuthenticationError):
        return True
    text = str(error).upper()
    return isinstance(error, redis.ResponseError) and (
        "WRONGPASS" in text or "NOAUTH" in text or "INVALID PASSWORD" in text
    )


def describe_error(error: BaseException, settings: RedisSettings) -> str:
    """One line an operator can act on; the password never appears in it."""
    where = settings.address
    if is_auth_error(error):
        if settings.sends_auth:
            return f"Redis at {where} refused the password ($redis_password)"
        return f"Redis at {where} requires a password and $redis_password is empty"
    if isinstance(error, redis.TimeoutError):
        return f"Redis at {where} did not answer in time"
    if isinstance(error, redis.ConnectionError):
        return f"Redis at {where} is unreachable: {error}"
    text = f"Redis at {where}: {type(error).__name__}: {error}"
    return mask_secrets(text, [settings.password.reveal()])


def translate(error: BaseException, settings: RedisSettings) -> StoreError:
    """tuitop's own error for a Redis error (:mod:`tuitop.backends.errors`): every one is
    Redis being away (a pool backs off), but refused credentials, and a reply that did
    not come in time, after which a write may have landed."""
    text = describe_error(error, settings)
    if is_auth_error(error):
        return CredentialsRefused(text)
    if isinstance(error, redis.TimeoutError):
        return MaybeWritten(text)
    return StoreUnavailable(text)


ERRORS: ErrorTypes = (redis.RedisError,)


def redis_clock(client: redis.Redis) -> float:
    """Redis' TIME, in epoch seconds."""
    seconds, micros = client.time()
    return seconds + micros / 1e6
