"""The study report's saturation section, from a fit.json document."""

from ft_scaling.study import report


def _entry(fitted, status, interval, ok, empirical, gain):
    return {"fitted": fitted, "status": status, "interval": interval, "bootstrap_ok": ok,
            "empirical": empirical, "gain_at_largest": gain}  # fmt: skip


DOCUMENT = {
    "settings": [
        {
            "group": {"task": "t", "method": "lora"},
            "saturation": {
                "threshold": 0.01,
                "by_factor": {
                    "model_params": {
                        "147552": _entry(1234.5, "found", [800.0, None], 96, 200.0, 0.0123),
                        "385344": _entry(1.0, "at range start", [1.0, 3.5], 96, 25.0, 0.004),
                    },
                },
            },
        },
        {
            "group": {"task": "t", "method": "fmt"},
            "saturation": {
                "threshold": 0.01,
                "by_factor": {
                    "pretrain_tokens": {
                        "51200": _entry(None, "beyond range", [None, None], 0, None, 0.05),
                    },
                },
            },
        },
    ]
}


def test_saturation_rows_show_point_interval_empirical_and_gain():
    lines = report.saturation_section(DOCUMENT)
    assert lines[0] == "## Saturation: how much data is enough?"
    assert "by less than 1.00% (relative)" in lines[2]
    rows = [line for line in lines if line.startswith("| lora") or line.startswith("| fmt")]
    assert rows == [
        # A missing upper bound with replicates behind it: some never saturate in range.
        "| lora | model_params | 147552 | 1.23e+03 [800, ∞] | 200 | 1.23% |",
        "| lora | model_params | 385344 | ≤ 1 [1, 3.5] | 25 | 0.40% |",
        "| fmt | pretrain_tokens | 51200 | not within 1e12 | – | 5.00% |",
    ]
    assert lines[-2].startswith("1 of 3 fitted curves gain less than 1.00% per doubling")


def test_no_saturation_in_the_document_means_no_section():
    assert report.saturation_section({"settings": [{"group": {}, "factors": {}}]}) == []
