"""What ``tuitop check`` asks of a Redis server itself, beside the queue: whether it
answers a client without the password, its version, whether it keeps an append-only file.

The answers are facts; :mod:`tuitop.check` judges them. No driver error leaves this
module: a server that does not answer or refuses to say is a fact too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from tuitop.backends.redis.connection import connect, describe_error
from tuitop.config import RedisSettings


@dataclass(frozen=True)
class Door:
    """Whether Redis answers a client that sends no password."""

    closed: bool | None
    """True: it refuses such a client; False: it answers it; None: could not tell."""
    why: str = ""
    """When it could not tell: why (no password in it)."""


@dataclass(frozen=True)
class ServerFacts:
    """Redis' version and persistence, or why they could not be read."""

    version: str = ""
    """``7.2.4``; empty when not known (INFO refused, CONFIG GET allowed)."""
    appendonly: bool | None = None
    """None: neither INFO nor CONFIG GET told."""
    refused: str = ""
    """INFO and CONFIG GET were both refused: the server's answer, described."""
    unreachable: str = ""
    """The server did not answer: why, described for an operator."""


def door(settings: RedisSettings, timeout: float) -> Door:
    """Does the server answer a client that sends no password? (Readable where CONFIG
    is renamed away, as hardening guides advise.)"""
    anonymous = redis.Redis(
        host=settings.host,
        port=settings.port,
        ssl=settings.tls,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    try:
        anonymous.ping()
    except redis.AuthenticationError:
        return Door(True)
    except redis.ResponseError as error:
        if "NOAUTH" in str(error).upper():
            return Door(True)
        return Door(None, str(error))
    except redis.RedisError as error:
        return Door(None, type(error).__name__)
    finally:
        anonymous.close()
    return Door(False)


def server_facts(settings: RedisSettings, timeout: float) -> ServerFacts:
    """The server's version and whether appendonly is on: from INFO (allowed where CONFIG
    is renamed away), else CONFIG GET."""
    client = connect(settings, client_name="tuitop:check", socket_timeout=timeout)
    try:
        try:
            info: dict[str, Any] = client.info("server")
            info.update(client.info("persistence"))
        except redis.ResponseError:
            reply: dict[str, str] = client.config_get("appendonly")  # type: ignore[assignment]
            value = reply.get("appendonly")
            return ServerFacts("", None if value is None else value == "yes")
    except redis.ResponseError as error:
        return ServerFacts(refused=describe_error(error, settings))
    except redis.RedisError as error:
        return ServerFacts(unreachable=describe_error(error, settings))
    finally:
        client.close()
    aof = info.get("aof_enabled")
    return ServerFacts(str(info.get("redis_version", "")), None if aof is None else bool(int(aof)))
