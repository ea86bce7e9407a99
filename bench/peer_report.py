"""The peers benchmark's figures summed up: min / median / max over runs, the ratios to the
bare loop pair by pair within a round, and the text tables.

A record is one pool, one job, one run: ``{"run", "pool", "job", "idle", "drain",
"wait"}`` (each a dict of figures from :class:`bench.peer_session.Session`), or with
``"error"`` (a message) in place of what could not be measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
BASELINE = "bare"


@dataclass(frozen=True)
class Figure:
    """One column: ``record[section][key]``, shown with ``digits`` decimals."""

    label: str
    section: str
    key: str
    digits: int

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def of(self, record: Record) -> float | None:
        section = record.get(self.section)
        if not isinstance(section, dict) or self.key not in section:
            return None
        return float(section[self.key])


FIGURES = (
    Figure("drain/s", "drain", "per_second", 0),
    Figure("cmds/job", "drain", "redis_commands_per_job", 2),
    Figure("CPU ms/job", "drain", "cpu_ms_per_job", 3),
    Figure("p50 ms", "wait", "p50_ms", 2),
    Figure("p99 ms", "wait", "p99_ms", 2),
    Figure("idle CPU%", "idle", "cpu_percent", 2),
    Figure("idle cmd/s", "idle", "redis_commands_per_second", 1),
    Figure("procs", "drain", "processes", 0),
    Figure("RSS MB mean", "drain", "rss_mean_mb", 1),
    Figure("RSS MB sum", "drain", "rss_sum_mb", 1),
)
DRAIN = FIGURES[0]
P99 = FIGURES[4]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """``{"min", "median", "max", "n"}`` of ``values``; None when there are none."""
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(records: Iterable[Record], pools: Sequence[str], jobs: Sequence[str]) -> list[Record]:
    """One row per pool and job: each figure's spread over the runs, and the errors."""
    records = list(records)
    rows = []
    for pool in pools:
        for job in jobs:
            mine = [r for r in records if r["pool"] == pool and r["job"] == job]
            row: Record = {"pool": pool, "job": job, "runs": len(mine)}
            for figure in FIGURES:
                found = [v for r in mine if (v := figure.of(r)) is not None]
                row[figure.name] = spread(found)
            row["errors"] = [f"run {r['run']}: {r['error']}" for r in mine if "error" in r]
            rows.append(row)
    return rows


def ratios(records: Iterable[Record], pools: Sequence[str], jobs: Sequence[str]) -> list[Record]:
    """Each pool against the bare loop, pair by pair within the same round and job: drain
    rate over the bare loop's (above 1: faster) and p99 over the bare loop's (above 1:
    slower); their spreads over the rounds."""
    records = list(records)
    found = {(r["run"], r["pool"], r["job"]): r for r in records}
    rows = []
    for pool in pools:
        for job in jobs:
            drains: list[float] = []
            waits: list[float] = []
            for (run, name, kind), record in found.items():
                base = found.get((run, BASELINE, job))
                if name != pool or kind != job or base is None:
                    continue
                mine, theirs = DRAIN.of(record), DRAIN.of(base)
                if mine is not None and theirs:
                    drains.append(mine / theirs)
                mine, theirs = P99.of(record), P99.of(base)
                if mine is not None and theirs:
                    waits.append(mine / theirs)
            row: Record = {"pool": pool, "job": job}
            rows.append(row | {"drain_ratio": spread(drains), "p99_ratio": spread(waits)})
    return rows


def number(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float) -> str:
    """A ratio with three significant digits below 1 (0.0345), two decimals above."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A text table: the first two columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if index < 2 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def figures_table(summary: Sequence[Record], statistic: str) -> str:
    """The figures of every row, each its ``statistic`` (min, median or max) over runs."""
    header = ["pool", "job", *(figure.label for figure in FIGURES)]
    rows = []
    for row in summary:
        if all(row[figure.name] is None for figure in FIGURES):
            found = "error" if row["errors"] else "no result"
            rows.append([row["pool"], row["job"], found, *[""] * (len(FIGURES) - 1)])
            continue
        cells = [row["pool"], row["job"]]
        for figure in FIGURES:
            found = row[figure.name]
            cells.append(number(found[statistic] if found else None, figure.digits))
        rows.append(cells)
    return render(header, rows)


def ranges_table(summary: Sequence[Record]) -> str:
    """min-max of every figure of every row."""
    header = ["pool", "job", *(figure.label for figure in FIGURES)]
    rows = []
    for row in summary:
        cells = [row["pool"], row["job"]]
        for figure in FIGURES:
            found = row[figure.name]
            cells.append(
                f"{number(found['min'], figure.digits)}-{number(found['max'], figure.digits)}"
                if found
                else "-"
            )
        rows.append(cells)
    return render(header, rows)


def ratios_table(rows: Sequence[Record]) -> str:
    """min / median / max of the drain and p99 ratios to the bare loop."""
    header = ["pool", "job", "drain / bare", "p99 / bare", "pairs"]
    lines = []
    for row in rows:
        if row["pool"] == BASELINE:
            continue
        cells = [row["pool"], row["job"]]
        for key in ("drain_ratio", "p99_ratio"):
            found = row[key]
            cells.append(
                " / ".join(ratio(found[s]) for s in ("min", "median", "max")) if found else "-"
            )
        counts = [int(row[key]["n"]) for key in ("drain_ratio", "p99_ratio") if row[key]]
        cells.append(str(max(counts, default=0)))
        lines.append(cells)
    return render(header, lines)
