"""The study report's saturation section, from the fitted settings of a table fit."""

import math

from ft_scaling.scaling import analysis, fit, procedure, table_fit
from ft_scaling.study import report


def _saturation(x, fitted, status, interval, ok, empirical, gain):
    return analysis.Saturation(x, 0.01, fitted, status, interval, ok, empirical, gain)


def _setting(method, saturation):
    fitted = procedure.SettingFit(
        "two_stage", "multiplicative", "paper", fit.FitOptions(), None, {}
    )
    return table_fit.FittedSetting({"task": "t", "method": method}, fitted, saturation, {})


SETTINGS = (
    _setting(
        "lora",
        {
            "model_params": (
                _saturation(147552.0, 1234.5, "found", (800.0, math.inf), 96, 200.0, 0.0123),
                _saturation(385344.0, 1.0, "at range start", (1.0, 3.5), 96, 25.0, 0.004),
            ),
        },
    ),
    _setting(
        "fmt",
        {
            "pretrain_tokens": (
                _saturation(51200.0, None, "beyond range", (math.nan, math.nan), 0, None, 0.05),
            ),
        },
    ),
)


def test_saturation_rows_show_point_interval_empirical_and_gain():
    lines = report.saturation_section(SETTINGS)
    assert lines[0] == "## Saturation: how much data is enough?"
    assert "by less than 1.00% (relative)" in lines[2]
    rows = [line for line in lines if line.startswith("| lora") or line.startswith("| fmt")]
    assert rows == [
        # An infinite upper bound with replicates behind it: some never saturate in range.
        "| lora | model_params | 147552 | 1.23e+03 [800, ∞] | 200 | 1.23% |",
        "| lora | model_params | 385344 | ≤ 1 [1, 3.5] | 25 | 0.40% |",
        "| fmt | pretrain_tokens | 51200 | not within 1e12 | – | 5.00% |",
    ]
    assert lines[-2].startswith("1 of 3 fitted curves gain less than 1.00% per doubling")


def test_no_saturation_in_the_settings_means_no_section():
    assert report.saturation_section([_setting("fmt", {})]) == []
