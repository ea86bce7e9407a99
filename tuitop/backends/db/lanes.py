"""Lanes in the database: a lane is a filter on the topics of Tuleap's table, not a place.

In Redis a list can only be taken from its end, so a lane needs a list of its own and
messages are moved to it. A table can be read where one wants: a worker takes the oldest
row *whose topic is of its lane* (``ORDER BY id`` on the queue's index, the filter applied
as rows are read), so a message never moves for its lane, stays in Tuleap's table where
Tuleap's SYSTEM_CHECK counts it, and a lane no pool serves needs no moving back: it waits
where any worker whose lanes include it, or a Tuleap worker, takes it.

The filter says what :meth:`~tuitop.lanes.LaneSet.lane_of` says — the first lane that names
the topic, else the default lane — with the globs as ``LIKE`` patterns on the topic's bytes.
"""

from __future__ import annotations

from tuitop.lanes import DEFAULT_LANE, LaneSet

_LIKE_ESCAPES = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})


def like_pattern(glob: str) -> str:
    """A lane's topic glob (``*`` any, ``?`` one byte) as a LIKE pattern."""
    return glob.translate(_LIKE_ESCAPES).replace("*", "%").replace("?", "_")


def lane_expression(lanes: LaneSet) -> tuple[str, list[str]]:
    """SQL naming the lane of the row's ``topic``, and its arguments."""
    if not lanes.lanes:
        return "%s", [DEFAULT_LANE]
    cases: list[str] = []
    args: list[str] = []
    for lane in lanes.lanes:
        tests = " OR ".join("CAST(topic AS BINARY) LIKE %s" for _ in lane.topics)
        cases.append(f"WHEN {tests} THEN %s")
        args += [like_pattern(topic) for topic in lane.topics] + [lane.name]
    return f"(CASE {' '.join(cases)} ELSE %s END)", [*args, DEFAULT_LANE]


def lane_filter(lanes: LaneSet, lane: str) -> tuple[str, list[str]]:
    """An SQL condition true for the rows of ``lane`` (``TRUE`` when there are no lanes)."""
    if not lanes.lanes:
        return ("TRUE", []) if lane == DEFAULT_LANE else ("FALSE", [])
    expression, args = lane_expression(lanes)
    return f"{expression} = %s", [*args, lane]
