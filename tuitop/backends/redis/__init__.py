"""The Redis backend: Tuleap's ``app_user_events`` list and tuitop's keys beside it.

Each module owns one thing: :mod:`.keys` the key names, :mod:`.connection` the client
(and what its errors mean to an operator), :mod:`.queue` the moves (Lua scripts and
MULTI/EXEC); :mod:`.channel`, :mod:`.pool` and :mod:`.view` fit them to the seam of
:mod:`tuitop.backends.base` (as the database's modules of the same names do),
:mod:`.tuleapworkers` the lists of Tuleap's own Redis-era workers, :mod:`.mailbox` the
pool's wake-up on a command. Only this package imports ``redis``.
"""
