"""The report's table of where the finetuning runs' wall time went."""

import math

from ft_scaling.study import time_report
from ft_scaling.train import summary as summary_lib


def _row(method, wall, **phases):
    row = {"method": method, "wall_time": wall}
    row.update({f"{p}_time": phases.get(p, 0.0) for p in summary_lib.TIMING_PHASES})
    return row


def test_sums_per_method_and_counts_untimed_rows_apart():
    old = {"method": "lora", "wall_time": 7.0}  # recorded before timings: empty cells
    old.update({f"{p}_time": math.nan for p in summary_lib.TIMING_PHASES})
    rows = [
        _row("lora", 4.0, setup=1.0, compile=2.0, train=0.5),
        _row("lora", 2.0, setup=0.5, train=1.0),
        _row("fmt", 10.0, compile=6.0, checkpoint=3.0),
        old,
    ]
    sums = time_report.sums(rows)
    assert sums["lora"]["runs"] == 3 and sums["lora"]["timed"] == 2
    assert sums["lora"]["wall"] == 13.0 and sums["lora"]["timed_wall"] == 6.0
    assert sums["lora"]["setup"] == 1.5 and sums["lora"]["compile"] == 2.0
    assert sums["fmt"]["checkpoint"] == 3.0
    lines = time_report.section(rows)
    table = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    # lora: 3 runs, 13 s of wall, 6 s timed: setup 1.5 (25%), other 6 - 5 = 1 s (17%).
    assert table["lora"].startswith("| lora | 3 | 13.0 | 4.33 | 1.5 (25%) | 2.0 (33%) |")
    assert table["lora"].endswith("| 1.5 (25%) | 0.0 (0%) | 0.0 (0%) | 0.0 (0%) | 1.0 (17%) |")
    assert table["fmt"].endswith("| 1.0 (10%) |")
    assert any("1 runs were recorded without timings" in line for line in lines)


def test_no_rows_no_section():
    assert time_report.section([]) == []
