"""Lanes in the database: a lane is a ``queue_name`` of Tuleap's table, as in Redis a list.

Tuleap's front ends insert every message with ``queue_name = 'app_user_events'``. A worker
that takes from there a message of a lane it does not serve moves it, in the same
transaction, to that lane's ``queue_name`` (``app_user_events-lane-<lane>``, the name of
the lane's list in Redis): the row stays in Tuleap's table, in a range of the table's own
index (``idx_queue_name``) that only that lane's workers read. So every take reads an index
range from its start, whatever waits in other lanes.

Why not read Tuleap's rows where they are, filtered by topic: the table has no index on
the topic, and tuitop adds none to Tuleap's tables, so a default-lane worker had to read
past every row of another lane at the head of the queue to find its own: 0.2 to 0.3 s a
take behind 50,000 rows of a reindex lane (the second reader's measure), which is the
backlog lanes exist for.

What a lane's name is in Tuleap's table is also what makes it Tuleap's again: a lane no
pool serves any more goes back to ``app_user_events`` (:mod:`.pool`), as in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tuitop.lanes import DEFAULT_LANE, LaneSet, is_lane_name, lane_of_queue, lane_queue


@dataclass(frozen=True)
class TakePlan:
    """Where a worker takes from, in order, and which messages it moves to another lane
    (the database's :class:`tuitop.backends.redis.queue.TakePlan`)."""

    lanes: LaneSet = field(default_factory=LaneSet)
    serves: tuple[str, ...] = (DEFAULT_LANE,)

    @property
    def sources(self) -> list[tuple[str, str]]:
        """(lane, queue_name) of each lane it serves, its own first."""
        return [(lane, lane_queue(lane)) for lane in self.serves]

    @property
    def routes(self) -> bool:
        """Whether any message it may take from Tuleap's queue belongs elsewhere."""
        return any(lane.name not in self.serves for lane in self.lanes.reserved)

    def route(self, topic: str) -> str | None:
        """The lane to move a message of ``topic`` to, or None to keep it."""
        lane = self.lanes.lane_of(topic)
        return None if lane in self.serves else lane


def lane_names(queue_names: Iterable[str]) -> list[str]:
    """The lanes (other than the default one) that ``queue_names`` name, sorted; a name
    that is not a lane's (anyone may write the table) is none."""
    found = {lane_of_queue(name) for name in queue_names}
    return sorted(lane for lane in found if lane is not None and is_lane_name(lane))
