"""The pool's worker set (tuitop.pool.workers), what it leaves on the host."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tuitop.pool.options import PoolOptions
from tuitop.pool.stacks import PREFIX
from tuitop.pool.workers import WorkerSet, new_context


def test_the_stack_dump_directories_of_killed_pools_are_removed() -> None:
    """SIGKILL cleans nothing up: the next pool on the host removes what is left."""
    tmp = Path(tempfile.gettempdir())
    left = Path(tempfile.mkdtemp(prefix=f"{PREFIX}999999999-"))
    (left / "0-1").write_text("a stack")
    context = new_context()
    workers = WorkerSet(PoolOptions(), context, context.RawValue("i", 0), logging.getLogger())
    try:
        assert not left.exists()
        assert workers.stacks.directory.parent == tmp and workers.stacks.directory.exists()
        assert workers.stacks.directory.stat().st_mode & 0o077 == 0  # the pool's alone
    finally:
        workers.close()
    assert not workers.stacks.directory.exists()
