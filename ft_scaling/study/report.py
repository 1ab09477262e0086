"""The study report: results table, fitted laws, plots, and the paper's questions answered.

stores (*.sqlite) -> results.csv -> `ft-scaling fit` (multiplicative, two stages: the paper's
procedure) and the additive law as a rival -> report.md with
  runs (finished / failed, with errors)
  fitted laws per method and factor (params, Δe, Δh, bootstrap intervals) and plots
  Q1 does the multiplicative law fit (Δh, and against the additive law)?
  Q2 is α for model size larger than for pretraining data?
  Q3 does PET parameter scaling help (|α_t| small)?
  critical finetuning data sizes between methods
  saturation: per method, factor and X, the D_f from which one more doubling of data improves
    the test loss by less than `saturation_threshold` (relative), from the fitted law with its
    bootstrap interval, and empirically from the measured points
"""

import json
import math
import os

from ft_scaling.scaling import fit_cli
from ft_scaling.study import store as store_lib

PET_SCALING_THRESHOLD = 0.01  # the paper's "|alpha_t| << 1e-2" (PAPER.md §6)
SATURATION_THRESHOLD = 0.01  # 1% less loss per doubling of D_f (issue 9's example)


def write_report(out_dir: str, starts: int = 300) -> str:
    """Writes OUT/results.csv, OUT/fit*/ and OUT/report.md; returns the report's path.

    The held-out rule and bootstrap size come from the study (OUT/report_settings.json), as
    may `saturation_threshold` (default SATURATION_THRESHOLD).
    """
    settings = {"held_out": "paper", "bootstrap": 100, "saturation_threshold": SATURATION_THRESHOLD}
    settings_path = os.path.join(out_dir, "report_settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            settings.update(json.load(f))
    rows = store_lib.finished_finetune_rows(out_dir)
    csv_path = os.path.join(out_dir, "results.csv")
    store_lib.export_csv(rows, csv_path)
    sections = [f"# Study report: {os.path.basename(os.path.abspath(out_dir))}", ""]
    sections += _runs_section(out_dir, rows)
    fits = {}
    if rows:
        for law in ("multiplicative", "additive"):
            out = os.path.join(out_dir, f"fit_{law}")
            fits[law] = _fit(csv_path, law, out, settings, starts)
    main = fits.get("multiplicative")
    if main and main.get("document"):
        for note in main["notes"]:
            sections += [f"Not fitted: {note}", ""]
        sections += _fits_section(out_dir, main)
        sections += saturation_section(main["document"])
        sections += _questions(main["document"], fits.get("additive", {}).get("document"))
    elif main:
        sections += ["## Fits", "", f"The fit could not run: {main['error']}", ""]
    sections.insert(
        2,
        f"Held-out rule: `{settings['held_out']}`; bootstrap replicates: "
        f"{settings['bootstrap']} (resampling runs).\n",
    )
    path = os.path.join(out_dir, "report.md")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(sections) + "\n")
    os.replace(tmp, path)
    return path


def _fit(csv_path, law, out, settings, starts) -> dict:
    """Fits every factor; if one cannot be fitted, the others are fitted and the reason kept."""
    argv = [
        csv_path,
        "--law",
        law,
        "--out",
        out,
        "--bootstrap",
        str(settings["bootstrap"]),
        "--starts",
        str(starts),
        "--group",
        "task,method",
        "--held_out",
        settings["held_out"],
        "--saturation_threshold",
        str(settings["saturation_threshold"]),
    ]
    notes = []
    for factors in ("all", "model_params,pretrain_tokens", "model_params"):
        try:
            status = fit_cli.run(fit_cli.parse_args([*argv, "--factor", factors]))
        except ValueError as err:  # too few points, a single value: reported, not fatal
            notes.append(f"factors {factors}: {err}")
            continue
        with open(os.path.join(out, "fit.json")) as f:
            return {"status": status, "document": json.load(f), "dir": out, "notes": notes}
    return {"error": "; ".join(notes)}


def _runs_section(out_dir: str, finished: list[dict]) -> list[str]:
    failed = []
    for store in store_lib.open_all(out_dir):
        failed += store.rows(status="failed")
        store.close()
    lines = [
        "## Runs",
        "",
        f"{len(finished)} finetuning runs finished; {len(failed)} failed.",
        "Results table: `results.csv` (one row per finished run).",
        "",
    ]
    for row in failed:
        first = (row.get("error") or "").splitlines()[0] if row.get("error") else "?"
        lines.append(f"- failed {row['kind']} run `{row['run_id']}`: {first}")
    return lines + [""] if failed else lines


def _fits_section(out_dir: str, fit: dict) -> list[str]:
    rel = os.path.relpath(fit["dir"], out_dir)
    with open(os.path.join(fit["dir"], "summary.md")) as f:
        summary = f.read().replace(
            "# Scaling-law fits",
            "## Fitted laws (multiplicative, two-stage, held-out points as in the paper)",
        )
    plots = sorted(p for p in os.listdir(fit["dir"]) if p.endswith(".png"))
    lines = [summary, "", "### Plots", ""]
    lines += [f"![{p}]({rel}/{p})" for p in plots]
    return lines + [""]


def _saturation_cell(entry: dict) -> str:
    """'1.2e+03 [850, ∞]': the fitted point and its bootstrap interval."""
    if entry["fitted"] is None:
        point = "not within 1e12"
    elif entry["status"] == "at range start":
        point = f"≤ {entry['fitted']:.3g}"
    else:
        point = f"{entry['fitted']:.3g}"
    low, high = entry.get("interval") or (None, None)
    if (entry.get("bootstrap_ok") or 0) < 2:
        return point
    # JSON has no infinity: a missing bound with replicates behind it is an unbounded one.
    low = "∞" if low is None else f"{low:.3g}"
    high = "∞" if high is None else f"{high:.3g}"
    return f"{point} [{low}, {high}]"


def saturation_section(document: dict) -> list[str]:
    """Where more data stops paying, per method, factor and factor value (from fit.json)."""
    settings = [s for s in document.get("settings", []) if s.get("saturation")]
    if not settings:
        return []
    threshold = settings[0]["saturation"]["threshold"]
    lines = [
        "## Saturation: how much data is enough?",
        "",
        f"D_f from which one more doubling of the data lowers the test loss by less than "
        f"{threshold:.2%} (relative): fitted [95% bootstrap interval], and measured (the "
        "smallest D_f from which every further measured doubling gains less; – when the "
        "largest still gains more). Gain at largest: the law's gain at the largest D_f.",
        "",
        "| method | factor | X | fitted D_f [interval] | empirical D_f | gain at largest |",
        "|---|---|---|---|---|---|",
    ]
    entries = [
        (setting["group"].get("method", "all"), factor, x, entry)
        for setting in settings
        for factor, per_value in setting["saturation"]["by_factor"].items()
        for x, entry in per_value.items()
    ]
    for method, factor, x, entry in entries:
        empirical = "–" if entry["empirical"] is None else f"{entry['empirical']:.4g}"
        gain = entry.get("gain_at_largest")
        gain = "–" if gain is None else f"{gain:.2%}"
        cells = [method, factor, x, _saturation_cell(entry), empirical, gain]
        lines.append("| " + " | ".join(cells) + " |")
    at_start = sum(entry["status"] == "at range start" for *_, entry in entries)
    if at_start:
        lines += [
            "",
            f"{at_start} of {len(entries)} fitted curves gain less than {threshold:.2%} per "
            "doubling already at D_f = 1 (shown as ≤ 1): by this threshold they are saturated "
            "before any measured size. A smaller `saturation_threshold` in "
            "report_settings.json locates where their gains fade.",
        ]
    return lines + [""]


def _factor(document: dict, method: str, factor: str) -> dict | None:
    for setting in document.get("settings", []):
        if setting["group"].get("method") == method:
            return setting["factors"].get(factor)
    return None


def _methods(document: dict) -> list[str]:
    return [s["group"].get("method") for s in document.get("settings", [])]


def _mean_delta(document: dict | None, key: str) -> float:
    """Mean of Δe or Δh over every fitted setting and factor (NaN when there is none)."""
    if not document:
        return math.nan
    values = [
        f[key]
        for s in document.get("settings", [])
        for f in s["factors"].values()
        if f.get(key) is not None
    ]
    return sum(values) / len(values) if values else math.nan


def _questions(document: dict, additive: dict | None) -> list[str]:
    lines = ["## The paper's questions, answered from these runs", ""]
    mult, add = _mean_delta(document, "delta_h"), _mean_delta(additive, "delta_h")
    fit_e, add_e = _mean_delta(document, "delta_e"), _mean_delta(additive, "delta_e")
    q1 = (
        f"**Q1. Does the multiplicative joint law fit?** Mean fitting error Δe = {fit_e:.4g} "
        f"(additive law: {add_e:.4g}); mean held-out error Δh = {mult:.4g} (additive: "
        f"{add:.4g}). "
    )
    if math.isnan(mult) or math.isnan(add):
        q1 += "No held-out points, so extrapolation is not measured."
    elif mult <= add:
        q1 += "The multiplicative law extrapolates at least as well as the additive law."
    else:
        q1 += "The additive law extrapolates better on these runs."
    lines.append(q1)
    lines.append("")
    lines.append("**Q2. Is α for model size larger than for pretraining data?**")
    for method in _methods(document):
        model, tokens = (
            _factor(document, method, "model_params"),
            _factor(document, method, "pretrain_tokens"),
        )
        if model and tokens:
            a_m, a_p = model["params"]["alpha"], tokens["params"]["alpha"]
            verdict = "yes" if a_m > a_p else "no"
            lines.append(f"- {method}: α_m = {a_m:.4g}, α_p = {a_p:.4g} → {verdict}")
    lines += [
        "",
        f"**Q3. Does PET parameter scaling help?** (|α_t| < {PET_SCALING_THRESHOLD} "
        "means no, as in the paper)",
    ]
    for method in _methods(document):
        pet = _factor(document, method, "trainable_params")
        if pet:
            alpha = pet["params"]["alpha"]
            verdict = "no (ineffective)" if abs(alpha) < PET_SCALING_THRESHOLD else "yes"
            lines.append(f"- {method}: α_t = {alpha:.4g} → {verdict}")
    return lines + [""]
