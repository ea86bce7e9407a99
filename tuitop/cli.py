"""The ``tuitop`` command: argument parsing and the sub-commands, nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tuitop import __version__
from tuitop.config import DEFAULT_CONFIG_FILES, ConfigError, LoadedConfig, load_config

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        action="append",
        help="a PHP config file, read in the order given (repeat for several; default: "
        + " then ".join(DEFAULT_CONFIG_FILES)
        + ", skipping a missing one)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuitop",
        description="Tuleap-compatible backend workers with a live terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"tuitop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    config = commands.add_parser(
        "config",
        help="print the effective settings read from the config files",
        description="Read the config files as Tuleap does and print the effective settings "
        "(passwords masked). Exit 0 when they are valid, 2 with the error otherwise.",
    )
    _add_config_option(config)
    config.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: 'variables' (as PHP has them) and 'settings'",
    )
    return parser


def read_config(paths: Sequence[str] | None) -> LoadedConfig:
    """Loads the files named on the command line, or the defaults (missing ones skipped)."""
    if paths:
        return load_config(paths)
    return load_config(DEFAULT_CONFIG_FILES, skip_missing=True)


def _print_settings(loaded: LoadedConfig) -> None:
    settings = loaded.settings
    redis = settings.redis
    password = "password set" if redis.sends_auth else "no password"
    rows = [
        ("files", ", ".join(settings.files) or "(none found: built-in defaults)"),
        ("redis", f"{redis.address} ({password})" if redis.configured else redis.address),
        ("backend workers", str(settings.backend_workers)),
        ("async emails", str(settings.async_scope)),
        ("log level", str(settings.log_level)),
        ("mail", settings.mail.describe()),
        ("noreply", settings.mail.noreply or "(not set)"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def command_config(args: argparse.Namespace) -> int:
    try:
        loaded = read_config(args.config)
    except ConfigError as error:
        print(f"tuitop: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    for diagnostic in loaded.diagnostics:
        print(diagnostic, file=sys.stderr)
    for warning in loaded.settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        document = {"variables": loaded.variables_json(), "settings": loaded.settings.to_json()}
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        _print_settings(loaded)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return command_config(args)
    build_parser().print_help()
    return EXIT_OK
