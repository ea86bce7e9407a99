"""tuitop: Tuleap-compatible backend workers with a live terminal UI."""

__version__ = "0.1.0"
