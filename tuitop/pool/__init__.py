"""The pool: a parent process that runs, watches and replaces worker processes.

Split by what each part owns — the loop (:mod:`.arbiter`), the processes
(:mod:`.workers`), the link to the store (:mod:`.link`), the pool's presence there
(:mod:`.presence`), recovery (:mod:`.recovery`) — and the decisions they take, pure
(:mod:`.plan`). Callers need :class:`Supervisor` and :class:`PoolOptions`.
"""

from tuitop.pool.arbiter import Supervisor
from tuitop.pool.options import PoolOptions

__all__ = ["PoolOptions", "Supervisor"]
