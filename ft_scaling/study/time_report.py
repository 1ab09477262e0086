"""The report's "Where the time went" table: the finetuning runs' wall time by phase.

Each finished row carries `wall_time` and `<phase>_time` columns (`summary.TIMING_PHASES`,
filled by the loop's `timings.PhaseTimer`); this sums them per method, with the share of wall
time per phase, the unattributed rest, and seconds per run. Rows recorded before timings
existed (empty cells) are counted in `runs` and `wall` but not in the phases, and the table says
how many there were.
"""

import collections
from collections.abc import Sequence

from ft_scaling.train import summary as summary_lib

PHASES = summary_lib.TIMING_PHASES


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN: an empty cell


def sums(rows: Sequence[dict]) -> dict[str, dict]:
    """method -> {runs, timed, wall, <phase>...} summed over the rows (seconds)."""
    out = collections.defaultdict(lambda: {"runs": 0, "timed": 0, "wall": 0.0, "timed_wall": 0.0})
    for row in rows:
        entry = out[str(row.get("method"))]
        wall = _number(row.get("wall_time")) or 0.0
        entry["runs"] += 1
        entry["wall"] += wall
        phases = [_number(row.get(f"{phase}_time")) for phase in PHASES]
        if any(p is None for p in phases):
            continue
        entry["timed"] += 1
        entry["timed_wall"] += wall
        for phase, seconds in zip(PHASES, phases, strict=True):
            entry[phase] = entry.get(phase, 0.0) + seconds
    return dict(out)


def section(rows: Sequence[dict]) -> list[str]:
    """The report's lines (none without rows)."""
    by_method = sums(rows)
    if not by_method:
        return []
    header = ["method", "runs", "wall s", "s / run", *PHASES, "other"]
    lines = [
        "## Where the time went",
        "",
        "Finetuning runs' wall time summed per method, seconds and share of the timed runs' wall "
        "time per phase (compile: tracing and XLA compilation wherever it happened; other: "
        "summary and config writes, Python between phases).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    untimed = 0
    for method, entry in sorted(by_method.items()):
        untimed += entry["runs"] - entry["timed"]
        timed_wall = entry["timed_wall"]
        cells = [method, str(entry["runs"]), f"{entry['wall']:.1f}"]
        cells.append(f"{entry['wall'] / entry['runs']:.2f}")
        attributed = 0.0
        for phase in PHASES:
            seconds = entry.get(phase)
            if seconds is None:
                cells.append("–")
                continue
            attributed += seconds
            cells.append(_with_share(seconds, timed_wall))
        cells.append(_with_share(timed_wall - attributed, timed_wall) if entry["timed"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if untimed:
        lines += ["", f"{untimed} runs were recorded without timings (before they were kept)."]
    return lines + [""]


def _with_share(seconds: float, wall: float) -> str:
    share = f" ({seconds / wall:.0%})" if wall > 0 else ""
    return f"{seconds:.1f}{share}"
