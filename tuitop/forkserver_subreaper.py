"""Makes the workers' forkserver adopt what a killed worker leaves running.

multiprocessing's forkserver imports the modules of its preload
(:data:`tuitop.pool.workers.WORKER_PRELOAD`) before it forks its first worker; imported
there, this one makes it a child subreaper (:func:`tuitop.osutil.become_child_subreaper`).
A worker is one itself (:class:`tuitop.tasks.TaskRunner`'s ``adopt_orphans``): what its
tasks leave running is its child while it lives. When it is killed, its children — those
orphans, its task — are re-parented to the forkserver, the nearest subreaper, instead of
init, and the pool ends them as it reaps the worker (:func:`tuitop.tasks.end_adopted`:
the forkserver's children that are not workers). The forkserver reaps them as they end,
as it reaps its workers (its SIGCHLD loop waits for any child); the warning it gives for
a child it did not fork itself is silenced here.

Imported anywhere else, it does nothing.
"""

from __future__ import annotations

import sys
import warnings
from multiprocessing import forkserver
from types import FrameType

from tuitop.osutil import become_child_subreaper


def _imported_by_the_forkserver() -> bool:
    """Whether this import runs inside the forkserver's ``main`` (its preload)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


if _imported_by_the_forkserver():
    warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid")
    become_child_subreaper()
