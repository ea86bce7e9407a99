"""systemd's unit for the pool, as ``tuitop install-unit`` writes it.

The unit shipped in :mod:`tuitop.data` (``tuitop.service``) is rendered for this host:
``ExecStart=`` runs the Python that runs this tuitop (a venv's interpreter finds its own
packages without any activation), with the config files named on the command line; a
user unit (``--user``, systemd's per-user manager) runs as its user and is wanted by
``default.target``; a system unit keeps ``User=codendiadm`` (Tuleap's user) where that
user exists, else comments it out and says so. It lives and dies with Tuleap as Tuleap's
own workers do (``PartOf=``, ``WantedBy=``, ``After=tuleap.service``; ``Conflicts=`` with
``tuleap-workers.service``), and where Tuleap is installed it waits for ``tuleap
--version`` and runs ``tuleap sanity-check`` before it starts; where Tuleap is not, those
lines are commented out and it is wanted by ``multi-user.target``. Writing the file is all
it does: the ``systemctl`` commands to run next are printed, never run.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tuitop.tasks import TULEAP_CLI

UNIT_NAME = "tuitop.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
TULEAP_USER = "codendiadm"
UNIT_MODE = 0o644
_NEEDS_QUOTES = re.compile(r"[\s\"';\\]")


LOGROTATE_NAME = "tuitop.logrotate"


def shipped(name: str) -> str:
    """The text of a file shipped in :mod:`tuitop.data` (``tuitop.service``,
    ``tuitop.logrotate``)."""
    return resources.files("tuitop.data").joinpath(name).read_text(encoding="utf-8")


def shipped_path(name: str) -> str:
    """Where a file shipped in :mod:`tuitop.data` is (to copy it by hand)."""
    return str(resources.files("tuitop.data").joinpath(name))


def unit_word(word: str) -> str:
    """``word`` as one word of a unit file's command line: ``%`` and ``$`` escaped (they
    are systemd's specifiers and variables there), quoted when it holds spaces,
    quotes, ``;`` or backslashes."""
    text = word.replace("%", "%%").replace("$", "$$")
    if not text or _NEEDS_QUOTES.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def exec_start(configs: Sequence[str], python: str = sys.executable) -> str:
    """The pool's command line: this interpreter, headless, with ``configs`` (made
    absolute: the unit runs in /) when any is given."""
    words = [python, "-m", "tuitop", "--no-ui"]
    for config in configs:
        words += ["--config", os.path.abspath(config)]
    return " ".join(unit_word(word) for word in words)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class Unit:
    """A rendered unit, and where it goes."""

    path: Path
    text: str
    notes: tuple[str, ...] = ()
    """What the admin should know about it (a user it does not run as, say)."""


def _comment_out(text: str, key: str, why: str) -> str:
    """``text`` with every ``key=`` line commented out, ``why`` above the first."""
    lines = text.split("\n")
    found = [index for index, line in enumerate(lines) if line.startswith(f"{key}=")]
    assert found, f"the shipped unit has no {key}= line"
    for index in found:
        lines[index] = "#" + lines[index]
    lines.insert(found[0], f"# {why}")
    return "\n".join(lines)


def tuleap_cli_path(text: str, cli: str) -> str:
    """``text`` with Tuleap's CLI at ``cli`` in its ExecStartPre= lines."""
    return "\n".join(
        line.replace(TULEAP_CLI, unit_word(cli)) if line.startswith("ExecStartPre=") else line
        for line in text.split("\n")
    )


def _set(text: str, key: str, value: str | None, why: str = "") -> str:
    """``text`` with its ``key=`` line set to ``value``, or commented out (None), with a
    comment line ``why`` above it."""
    pattern = re.compile(rf"^{re.escape(key)}=.*$", re.MULTILINE)
    match = pattern.search(text)
    assert match is not None, f"the shipped unit has no {key}= line"
    line = f"{key}={value}" if value is not None else f"#{match.group(0)}"
    if why:
        line = f"# {why}\n{line}"
    return text[: match.start()] + line + text[match.end() :]


def render(
    configs: Sequence[str] = (),
    *,
    user_unit: bool = False,
    unit_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    run_as_exists: bool | None = None,
    tuleap_cli: str | None = None,
) -> Unit:
    """The unit for this host. ``unit_dir`` overrides where it goes (default:
    /etc/systemd/system, or the user manager's ``~/.config/systemd/user``);
    ``run_as_exists`` overrides the look-up of Tuleap's user; ``tuleap_cli``: Tuleap's
    CLI the unit waits for and checks with before it starts (default: /usr/bin/tuleap
    where it exists; none: the unit is for a host without Tuleap)."""
    environment = os.environ if environ is None else environ
    text = _set(shipped(UNIT_NAME), "ExecStart", exec_start(configs))
    notes: list[str] = []
    cli = tuleap_cli if tuleap_cli is not None else TULEAP_CLI
    if tuleap_cli is not None or os.path.exists(TULEAP_CLI):
        text = tuleap_cli_path(text, os.path.abspath(cli))
    else:
        why = f"no {TULEAP_CLI} on this host when this was written: nothing to wait for"
        text = _comment_out(text, "ExecStartPre", why)
        if not user_unit:
            text = _set(text, "WantedBy", "multi-user.target", "no Tuleap here: started at boot")
        notes.append(
            f"there is no {TULEAP_CLI} here: the unit neither waits for Tuleap nor runs its "
            "sanity check, and starts at boot (multi-user.target)"
        )
    if user_unit:
        why = "a user unit runs as its user"
        text = _set(text, "User", None, why)
        text = _set(text, "Group", None)
        text = _set(text, "WantedBy", "default.target")
    elif not (user_exists(TULEAP_USER) if run_as_exists is None else run_as_exists):
        why = f"no user {TULEAP_USER} on this host when this was written: runs as root"
        text = _set(text, "User", None, why)
        text = _set(text, "Group", None)
        notes.append(
            f"there is no user {TULEAP_USER} (Tuleap's) here: the pool would run as root; "
            "set User= with 'systemctl edit tuitop.service'"
        )
    if unit_dir is None:
        unit_dir = user_unit_dir(environment) if user_unit else SYSTEM_UNIT_DIR
    return Unit(unit_dir / UNIT_NAME, text, tuple(notes))


def user_unit_dir(environ: Mapping[str, str]) -> Path:
    """Where the user manager reads the units its user writes."""
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return Path(config_home) / "systemd" / "user"


def write(unit: Unit, *, force: bool = False) -> bool:
    """Writes ``unit`` (atomically, mode 0644, its directory made if missing): False when
    the same text is there already. FileExistsError when another text is there and not
    ``force``: an admin's edits are not overwritten unasked."""
    try:
        present = unit.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        present = None
    if present == unit.text:
        return False
    if present is not None and not force:
        raise FileExistsError(unit.path)
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    temporary = unit.path.with_name(f".{unit.path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, UNIT_MODE)
    with open(descriptor, "w", encoding="utf-8") as handle:
        handle.write(unit.text)
    os.chmod(temporary, UNIT_MODE)  # whatever the umask
    os.replace(temporary, unit.path)
    return True


def next_steps(unit: Unit, *, user_unit: bool) -> list[str]:
    """The commands the admin runs next (printed, never run)."""
    systemctl = "systemctl --user" if user_unit else "systemctl"
    steps = [f"{systemctl} daemon-reload && {systemctl} enable --now {UNIT_NAME}"]
    if user_unit:
        steps.append("loginctl enable-linger $USER   # to keep it running after you log out")
    else:
        steps.append(
            f"cp {shipped_path(LOGROTATE_NAME)} /etc/logrotate.d/tuitop   # rotates the "
            "worker_log, unless Tuleap's rules already do"
        )
    return steps
