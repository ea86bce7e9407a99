"""Lanes: the spec, the topic → lane rule, which worker serves what (pure decisions)."""

from __future__ import annotations

import re

import pytest

from tuitop.lanes import DEFAULT_LANE, DEFAULT_SPEC, LONG_LANE, Lane, LaneSet, Staffing

D, L = DEFAULT_LANE, LONG_LANE


def test_the_default_spec_puts_tuleaps_long_topics_on_one_reserved_worker() -> None:
    lanes = LaneSet.parse(DEFAULT_SPEC)
    assert lanes.names == (D, L)
    for topic in (
        "tuleap.tracker.creation.jira",
        "tuleap.project.create-from-archive",
        "tuleap.mediawiki-standalone.farm-install-update",
        "tuleap.git.repository-fork",
        "tuleap.fts-meilisearch.process-pending-items-to-index",
        "tuleap.program_management.team.synchronize",
    ):
        assert lanes.lane_of(topic) == L
    for topic in (
        "tuleap.tracker.artifact",
        "tuleap.git.hooks.post-receive",
        "tuleap.git.repository-change",
        "tuleap.git.gitolite-project-configuration",
        "tuleap.program_management.iteration.update",
        "tuleap.fts.index-item",
        "x",
    ):
        assert lanes.lane_of(topic) == D
    assert lanes.plan(2) == (L, D)
    assert LaneSet.parse(lanes.describe()) == lanes


def test_parse_reads_counts_percentages_globs_and_separators() -> None:
    lanes = LaneSet.parse(
        " imports(2): tuleap.tracker.creation.jira tuleap.project.*;\n"
        "wiki ( 25% ) : tuleap.mediawiki-standalone.?nstance-*, x ; ; misc: a.b"
    )
    assert lanes.lanes == (
        Lane("imports", ("tuleap.tracker.creation.jira", "tuleap.project.*"), 2),
        Lane("wiki", ("tuleap.mediawiki-standalone.?nstance-*", "x"), 25, percent=True),
        Lane("misc", ("a.b",), 1),
    )
    assert lanes.lane_of("tuleap.project.create-from-archive") == "imports"
    assert lanes.lane_of("tuleap.mediawiki-standalone.instance-creation") == "wiki"
    assert lanes.lane_of("tuleap.mediawiki-standalone.farm") == D
    assert lanes.lane_of("aXb") == D  # '.' is a dot, not any character
    assert LaneSet.parse("") == LaneSet()
    assert LaneSet.parse(" ; ") == LaneSet()


def test_the_first_lane_naming_a_topic_wins() -> None:
    lanes = LaneSet.parse("a: tuleap.*; b: tuleap.x")
    assert lanes.lane_of("tuleap.x") == "a"
    assert [lane for _, lane in lanes.routes()] == ["a", "b"]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("long tuleap.x", "expected NAME(WORKERS): TOPIC"),
        ("Long(1): x", "lane 1: its name is not a lane name"),
        ("a: x; a: y", "named twice"),
        ("a(two): x", "its workers are not a number"),
        ("a(-1): x", "its workers are not a number"),
        ("a(150%): x", "more than all of them"),
        ("a(1):", "no topic"),
        ("a(1): tuleap/x", "topic 1 is not a topic"),
        ('a(1): ok, x"y', "topic 2 is not a topic"),
    ],
)
def test_parse_refuses_what_it_cannot_read_and_says_why(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)) as caught:
        LaneSet.parse(spec)
    # Said by place: the text itself (it might hold a secret) is never quoted.
    assert "'" not in str(caught.value).split("(")[0]


def test_the_plan_reserves_the_lowest_slots_and_always_keeps_a_default_worker() -> None:
    lanes = LaneSet.parse("a(2): x; b(50%): y")
    assert lanes.plan(0) == ()
    assert lanes.plan(1) == (D,)
    assert lanes.plan(2) == ("a", D)
    assert lanes.plan(3) == ("a", "a", D)
    assert lanes.plan(4) == ("a", "a", "b", D)
    assert lanes.plan(6) == ("a", "a", "b", "b", "b", D)
    assert LaneSet().plan(3) == (D, D, D)
    assert LaneSet.parse("a(0): x").plan(2) == (D, D)
    assert LaneSet.parse("a(1%): x").plan(2) == ("a", D)  # a percentage gets at least one


def test_workers_serve_their_lane_then_the_default_then_unstaffed_lanes() -> None:
    lanes = LaneSet.parse("a(1): x; b(1): y")
    plan = lanes.plan(2)  # (a, default): b has no worker of its own
    assert plan == ("a", D)
    assert lanes.serves("a", plan) == ("a", D, "b")
    assert lanes.serves(D, plan) == (D, "b")
    full = lanes.plan(3)
    assert lanes.serves(D, full) == (D,)  # never another lane's: long jobs cannot take over
    assert lanes.serves("b", full) == ("b", D)


def test_routes_are_anchored_lua_patterns_with_magic_characters_escaped() -> None:
    routes = LaneSet.parse("a: tuleap.mediawiki-standalone.*, x?y").routes()
    assert routes == (("^tuleap%.mediawiki%-standalone%..*$", "a"), ("^x.y$", "a"))


def test_staffing_starts_the_lane_missing_most_and_replaces_misfits() -> None:
    lanes = LaneSet.parse("a(1): x; b(1): y")
    staffing = Staffing(lanes, 3)  # a, b, default
    assert staffing.planned == {"a": 1, "b": 1, D: 1}
    assert staffing.to_start([], 3) == [D, "a", "b"]  # on a tie, the default lane first
    assert staffing.to_start([D, D], 1) == ["a"]
    assert staffing.to_start(["a", "b", D], 2) == [D, D]  # beyond the plan: default
    full = {0: ("a", ("a", D)), 1: ("b", ("b", D)), 2: (D, (D,))}
    assert staffing.misfits(full) == []
    # Scaled to 2: b has no worker of its own any more, so what everyone serves changes.
    smaller = Staffing(lanes, 2)
    assert smaller.misfits(full) == [0, 2]  # they serve b too now
    # Too large: b's worker, beyond its lane's share (none), is the one stopped first.
    assert smaller.surplus_first({0: "a", 1: "b", 2: D}) == [1, 2, 0]
    two = {0: ("a", ("a", D, "b")), 2: (D, (D, "b"))}
    assert smaller.misfits(two) == []
    # Two default workers where the plan wants one and an a: the higher one is replaced.
    assert smaller.misfits({0: (D, (D, "b")), 1: (D, (D, "b"))}) == [1]
    assert smaller.to_start([D], 1) == ["a"]


def test_a_pool_without_lanes_is_tuleaps() -> None:
    staffing = Staffing(LaneSet(), 3)
    assert staffing.planned == {D: 3}
    assert staffing.to_start([], 3) == [D, D, D]
    assert staffing.misfits({0: (D, (D,)), 1: (D, (D,))}) == []


def test_the_default_lane_may_claim_topics_before_a_catch_all() -> None:
    # Notifications fast, everything else on a lane that may wait: a reserved worker for
    # the rest, which helps the notifications when it has nothing of its own.
    lanes = LaneSet.parse("latency_10s: tuleap.tracker.artifact; latency_5m(1): *")
    assert lanes.lane_of("tuleap.tracker.artifact") == D
    assert lanes.lane_of("tuleap.fts.index-item") == "latency_5m"
    assert lanes.names == (D, "latency_5m")
    assert lanes.plan(2) == ("latency_5m", D)
    assert lanes.serves(D, lanes.plan(2)) == (D,)
    assert [lane for _, lane in lanes.routes()] == [D, "latency_5m"]
    assert LaneSet.parse(lanes.describe()) == lanes


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("latency_1s(1): tuleap.tracker.artifact", "would wait less than the default lane"),
        ("latency_500ms: x", "would wait less than the default lane"),
        (f"{D}(1): x", "written without (WORKERS)"),
    ],
)
def test_a_lane_faster_than_the_default_is_refused_with_the_way_to_do_it(
    spec: str, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)) as caught:
        LaneSet.parse(spec)
    assert D in str(caught.value)


def test_the_lane_of_the_rest_and_topics_never_matched() -> None:
    assert LaneSet.parse(DEFAULT_SPEC).catch_all == D
    bulk = LaneSet.parse("latency_10s: tuleap.tracker.artifact; latency_5m(1): *")
    assert bulk.catch_all == "latency_5m" and bulk.never_matched() == []
    shadowed = LaneSet.parse("latency_5m(1): *; latency_10s: a; x(1): b, c, b")
    assert shadowed.never_matched() == [
        "lane latency_10s: topic 1 is never matched: an earlier one takes every such topic first",
        "lane x: topic 1 is never matched: an earlier one takes every such topic first",
        "lane x: topic 2 is never matched: an earlier one takes every such topic first",
        "lane x: topic 3 is never matched: an earlier one takes every such topic first",
    ]


def test_topics_match_as_bytes_as_in_redis() -> None:
    lanes = LaneSet.parse("x(1): a*b, ?")
    assert lanes.lane_of("a\nb") == "x"  # '*' takes a newline, as Lua's '.*' does
    assert lanes.lane_of("é") == D  # two bytes: not '?'
    assert lanes.lane_of("e") == "x"
