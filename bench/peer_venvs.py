"""Each peer's own virtualenv, made on first use, outside the repository.

``~/.cache/tuitop-bench/venvs/<peer>-<version>`` (``$XDG_CACHE_HOME`` instead of
``~/.cache`` when set), with the pinned requirements of :data:`SPECS`. A virtualenv is
built in a temporary directory beside it and renamed into place once pip has succeeded,
so a half-built one is never used; one whose recorded requirements differ from the spec's
is built again. Every peer gets redis-py with hiredis, as tuitop has (arq 0.28 needs
redis-py < 6, so it gets 5.3.1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REQUIREMENTS_FILE = "bench-requirements.json"
HIREDIS = "hiredis==3.5.0"


@dataclass(frozen=True)
class VenvSpec:
    """A peer's virtualenv: its distribution (whose version names the directory), the
    pinned requirements, and the commands it must have."""

    peer: str
    distribution: str
    version: str
    requirements: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return cache_dir() / "venvs" / f"{self.peer}-{self.version}"

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    def bin(self, name: str) -> str:
        """The path of command ``name`` in the virtualenv."""
        return str(self.directory / "bin" / name)


SPECS: dict[str, VenvSpec] = {
    spec.peer: spec
    for spec in (
        VenvSpec("huey", "huey", "3.5.4", ("huey==3.5.4", "redis==8.1.0", HIREDIS)),
        VenvSpec("celery", "celery", "5.7.0", ("celery[redis]==5.7.0", "redis==8.1.0", HIREDIS)),
        VenvSpec(
            "dramatiq", "dramatiq", "2.2.1", ("dramatiq[redis]==2.2.1", "redis==8.1.0", HIREDIS)
        ),
        VenvSpec("arq", "arq", "0.28.0", ("arq==0.28.0", "redis==5.3.1", HIREDIS)),
        VenvSpec("rq", "rq", "3.0.0", ("rq==3.0.0", "redis==8.1.0", HIREDIS)),
    )
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tuitop-bench"


def ensure(spec: VenvSpec, log: Path) -> Path:
    """The virtualenv of ``spec``, built first if missing or stale; pip's output goes to
    ``log``. Raises RuntimeError (naming ``log``) when the build fails."""
    wanted = list(spec.requirements)
    recorded = spec.directory / REQUIREMENTS_FILE
    if spec.python.exists() and recorded.exists():
        try:
            if json.loads(recorded.read_text()) == wanted:
                return spec.directory
        except ValueError:
            pass
    building = spec.directory.with_name(spec.directory.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        steps = [
            [sys.executable, "-m", "venv", str(building)],
            [str(building / "bin" / "python"), "-m", "pip", "install", "-q", *wanted],
        ]
        for step in steps:
            if subprocess.run(step, stdout=output, stderr=subprocess.STDOUT).returncode:
                shutil.rmtree(building, ignore_errors=True)
                raise RuntimeError(f"building the {spec.peer} virtualenv failed: see {log}")
    (building / REQUIREMENTS_FILE).write_text(json.dumps(wanted) + "\n")
    shutil.rmtree(spec.directory, ignore_errors=True)
    building.rename(spec.directory)
    return spec.directory


def versions(python: str | os.PathLike[str], distributions: list[str]) -> dict[str, str]:
    """The installed version of each of ``distributions`` in the interpreter ``python``
    (``"missing"`` for one that is not installed)."""
    script = (
        "import importlib.metadata as m, json, sys\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        found[name] = 'missing'\n"
        "print(json.dumps(found))\n"
    )
    output = subprocess.run(
        [os.fspath(python), "-c", script, *distributions],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, str] = json.loads(output)
    return found
