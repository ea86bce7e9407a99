"""tuitop: Tuleap-compatible backend workers with a live terminal UI.

The public API for producers is importable from here — ``tuitop.Notifier``,
``tuitop.Notification``, ``tuitop.Mail``, ``tuitop.load_config`` — and loaded on first use,
so that ``import tuitop`` (and the command line) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Notifier": "tuitop.notify",
    "NotificationError": "tuitop.notify",
    "Notification": "tuitop.notification",
    "Mail": "tuitop.notification",
    "load_config": "tuitop.config",
    "Settings": "tuitop.config",
    "ConfigError": "tuitop.errors",
    "encode": "tuitop.message",
}

__all__ = [
    "ConfigError",
    "Mail",
    "Notification",
    "NotificationError",
    "Notifier",
    "Settings",
    "__version__",
    "encode",
    "load_config",
]

if TYPE_CHECKING:
    from tuitop.config import Settings, load_config
    from tuitop.errors import ConfigError
    from tuitop.message import encode
    from tuitop.notification import Mail, Notification
    from tuitop.notify import NotificationError, Notifier


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tuitop' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
