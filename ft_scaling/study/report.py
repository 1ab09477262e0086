"""The study report: results table, fitted laws, plots, and the paper's questions answered.

stores (*.sqlite) -> results.csv, and the finished rows -> `table_fit.fit_table` (multiplicative,
two stages: the paper's procedure; the additive and rectified laws as rivals), whose outputs go to
fit_<law>/ as `ft-scaling fit` writes them -> report.md with
  runs (finished / failed, with errors)
  where the time went: wall time per phase summed per method (`time_report`)
  generation metrics (BLEU, chrF, ROUGE-L of decoded test examples) per method, model and D_f,
    mean over seeds, when the study decoded them (`Study.generation_metrics`)
  fitted laws per method and factor (params, Δe, Δh, bootstrap intervals) and plots
  Q1 does the multiplicative law fit (Δh, and against the additive and rectified laws)?
  Q2 is α for model size larger than for pretraining data?
  Q3 does PET parameter scaling help (|α_t| small)?
  critical finetuning data sizes between methods
  saturation: per method, factor and X, the D_f from which one more doubling of data improves
    the test loss by less than `saturation_threshold` (relative), from the fitted law with its
    bootstrap interval, and empirically from the measured points
"""

import collections
import dataclasses
import math
import os
import sys
from collections.abc import Sequence

from ft_scaling import files
from ft_scaling.scaling import analysis, fit, table_fit
from ft_scaling.scaling import report as fit_report
from ft_scaling.scaling import results_table as tables
from ft_scaling.scaling.bootstrap import BootstrapOptions
from ft_scaling.study import store as store_lib
from ft_scaling.study import time_report

PET_SCALING_THRESHOLD = 0.01  # the paper's "|alpha_t| << 1e-2" (PAPER.md §6)
SATURATION_THRESHOLD = 0.01  # 1% less loss per doubling of D_f (issue 9's example)
LAWS = ("multiplicative", "additive", "rectified")  # the first is the paper's, the rest rivals
# Factors to fit, tried in turn: when a sweep cannot be fitted, the others still are.
FACTOR_FALLBACKS = (None, ("model_params", "pretrain_tokens"), ("model_params",))
GENERATION_METRICS = {"bleu": "BLEU", "chrf": "chrF", "rouge_l": "ROUGE-L"}


@dataclasses.dataclass(frozen=True)
class LawFit:
    """One law fitted to the study's rows (`result` None: no factor set could be fitted)."""

    law: str
    result: table_fit.TableFit | None
    directory: str  # where fit.json, summary.md, starts.csv and the plots went
    notes: tuple[str, ...]  # factor sets that could not be fitted, with the reason
    plots: tuple[str, ...] = ()  # the .png files in `directory`, sorted


def write_report(out_dir: str, starts: int = 300) -> str:
    """Writes OUT/results.csv, OUT/fit*/ and OUT/report.md; returns the report's path.

    The held-out rule and bootstrap size come from the study (OUT/report_settings.json), as
    may `saturation_threshold` (default SATURATION_THRESHOLD).
    """
    settings = _settings(out_dir)
    rows = store_lib.finished_finetune_rows(out_dir)
    csv_path = os.path.join(out_dir, "results.csv")
    store_lib.export_csv(rows, csv_path)
    fits = {law: _fit(out_dir, rows, law, settings, starts) for law in LAWS} if rows else {}
    sections = [
        f"# Study report: {os.path.basename(os.path.abspath(out_dir))}",
        "",
        f"Held-out rule: `{settings['held_out']}`; bootstrap replicates: "
        f"{settings['bootstrap']} (resampling runs).\n",
    ]
    sections += _runs_section(out_dir, rows)
    sections += generation_section(rows)
    sections += time_report.section(rows)
    sections += _fit_sections(fits)
    path = os.path.join(out_dir, "report.md")
    files.atomic_write_text(path, "\n".join(sections) + "\n")
    return path


def _settings(out_dir: str) -> dict:
    """The report's settings: defaults, updated from OUT/report_settings.json (the study's)."""
    settings = {"held_out": "paper", "bootstrap": 100, "saturation_threshold": SATURATION_THRESHOLD}
    path = files.path(out_dir) / "report_settings.json"
    if path.exists():
        settings.update(files.read_json(path))
    return settings


def _options(law, factors, settings: dict, starts: int) -> table_fit.TableFitOptions:
    return table_fit.TableFitOptions(
        law=law,
        factors=factors,
        held_out=str(settings["held_out"]),
        fit=fit.FitOptions(n_starts=starts),
        bootstrap=BootstrapOptions(replicates=int(settings["bootstrap"])),
        saturation_threshold=float(settings["saturation_threshold"]),
    )


def _fit(out_dir: str, rows: list[dict], law: str, settings: dict, starts: int) -> LawFit:
    """Fits every factor; if one cannot be fitted, the others are fitted and the reason kept."""
    directory = os.path.join(out_dir, f"fit_{law}")
    table, notes = tables.from_rows(rows), []
    for factors in FACTOR_FALLBACKS:
        options = _options(law, factors, settings, starts)
        try:
            result = table_fit.fit_table(table, options)
        except ValueError as err:  # too few points, a single value: reported, not fatal
            notes.append(f"factors {','.join(factors or ('all',))}: {err}")
            continue
        results_csv = os.path.join(out_dir, "results.csv")  # the same rows, as exported
        config = fit_report.config_summary(options, results_csv, plots=True)
        paths = fit_report.write_outputs(directory, result, config)
        if result.not_converged:
            print(f"warning: best fit did not converge for {result.not_converged}", file=sys.stderr)
        plots = sorted(os.path.basename(p) for p in paths if p.endswith(".png"))
        return LawFit(law, result, directory, tuple(notes), tuple(plots))
    return LawFit(law, None, directory, tuple(notes))


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


def _fit_sections(fits: dict[str, LawFit]) -> list[str]:
    """The multiplicative law's tables, plots, saturation and the paper's questions."""
    main = fits.get("multiplicative")
    if main is None:
        return []
    if main.result is None:
        return ["## Fits", "", f"The fit could not run: {'; '.join(main.notes)}", ""]
    lines = [line for note in main.notes for line in (f"Not fitted: {note}", "")]
    lines += _fits_section(main)
    lines += saturation_section(main.result.settings)
    rivals = {law: fits[law].result for law in LAWS[1:] if law in fits}
    return lines + _questions(main.result, rivals)


def _fits_section(main: LawFit) -> list[str]:
    summary = fit_report.markdown(main.result).replace(
        "# Scaling-law fits",
        "## Fitted laws (multiplicative, two-stage, held-out points as in the paper)",
    )
    rel = os.path.basename(main.directory)
    lines = [summary, "", "### Plots", ""]
    lines += [f"![{p}]({rel}/{p})" for p in main.plots]
    return lines + [""]


def _number(value, spec: str) -> str:
    """`value` formatted, or – when there is none (None, NaN: JSON's null in fit.json)."""
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def _saturation_cell(saturation: analysis.Saturation) -> str:
    """'1.2e+03 [850, ∞]': the fitted point and its bootstrap interval."""
    if saturation.d_f is None:
        point = "not within 1e12"
    elif saturation.status == "at range start":
        point = f"≤ {saturation.d_f:.3g}"
    else:
        point = f"{saturation.d_f:.3g}"
    if saturation.replicates < 2:
        return point
    # An infinite bound: some replicates never saturate in range.
    low, high = ("∞" if not math.isfinite(v) else f"{v:.3g}" for v in saturation.interval)
    return f"{point} [{low}, {high}]"


def saturation_section(settings: Sequence[table_fit.FittedSetting]) -> list[str]:
    """Where more data stops paying, per method, factor and factor value."""
    entries = [
        (setting.group.get("method", "all"), factor, saturation)
        for setting in settings
        for factor, per_value in setting.saturation.items()
        for saturation in per_value
    ]
    if not entries:
        return []
    threshold = entries[0][2].threshold
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
    for method, factor, saturation in entries:
        cells = [method, factor, f"{saturation.x:g}", _saturation_cell(saturation)]
        cells += [_number(saturation.empirical, ".4g"), _number(saturation.gain_at_largest, ".2%")]
        lines.append("| " + " | ".join(cells) + " |")
    at_start = sum(saturation.status == "at range start" for *_, saturation in entries)
    if at_start:
        lines += [
            "",
            f"{at_start} of {len(entries)} fitted curves gain less than {threshold:.2%} per "
            "doubling already at D_f = 1 (shown as ≤ 1): by this threshold they are saturated "
            "before any measured size. A smaller `saturation_threshold` in "
            "report_settings.json locates where their gains fade.",
        ]
    return lines + [""]


def _factor(result: table_fit.TableFit, method: str, factor: str):
    """The first setting of `method`'s FactorFit of `factor`, or None."""
    for setting in result.settings:
        if setting.group.get("method") == method:
            return setting.fit.factors.get(factor)
    return None


def _methods(result: table_fit.TableFit) -> list[str]:
    return [s.group.get("method") for s in result.settings]


def _mean_delta(result: table_fit.TableFit | None, key: str) -> float:
    """Mean of Δe or Δh over every fitted setting and factor (NaN when there is none)."""
    if not result:
        return math.nan
    values = [
        getattr(f, key)
        for s in result.settings
        for f in s.fit.factors.values()
        if math.isfinite(getattr(f, key))
    ]
    return sum(values) / len(values) if values else math.nan


def _questions(result: table_fit.TableFit, rivals: dict) -> list[str]:
    lines = ["## The paper's questions, answered from these runs", ""]
    lines += [_q1(result, rivals), ""]
    lines.append("**Q2. Is α for model size larger than for pretraining data?**")
    for method in _methods(result):
        model = _factor(result, method, "model_params")
        tokens = _factor(result, method, "pretrain_tokens")
        if model is not None and tokens is not None:
            a_m, a_p = model.params["alpha"], tokens.params["alpha"]
            verdict = "yes" if a_m > a_p else "no"
            pair = (("α_m", model), ("α_p", tokens))
            unidentified = [
                n for n, f in pair if analysis.exponent_identified(f.intervals["alpha"]) is False
            ]
            if unidentified:  # its interval spans zero or a factor of 3: not ranked
                verdict = f"{' and '.join(unidentified)} {analysis.NOT_IDENTIFIED}; not ranked"
            lines.append(f"- {method}: α_m = {a_m:.4g}, α_p = {a_p:.4g} → {verdict}")
    lines += [
        "",
        f"**Q3. Does PET parameter scaling help?** (|α_t| < {PET_SCALING_THRESHOLD} "
        "means no, as in the paper)",
    ]
    for method in _methods(result):
        pet = _factor(result, method, "trainable_params")
        if pet is not None:
            alpha = pet.params["alpha"]
            verdict = "no (ineffective)" if abs(alpha) < PET_SCALING_THRESHOLD else "yes"
            lines.append(f"- {method}: α_t = {alpha:.4g} → {verdict}")
    return lines + [""]


# A rival extrapolates "better" only by more than this (relative Δh): the rectified law nests
# the multiplicative one (D_l = 0) and otherwise wins by optimiser noise.
BETTER_BY = 0.01


def _q1(result: table_fit.TableFit, rivals: dict[str, table_fit.TableFit | None]) -> str:
    """Δe and Δh of the multiplicative law beside each rival law's, on the same points."""
    mult, fit_e = _mean_delta(result, "delta_h"), _mean_delta(result, "delta_e")
    errors = {
        law: (_mean_delta(r, "delta_e"), _mean_delta(r, "delta_h")) for law, r in rivals.items()
    }
    rival_e = "; ".join(f"{law} law: {e:.4g}" for law, (e, _) in errors.items())
    rival_h = "; ".join(f"{law}: {h:.4g}" for law, (_, h) in errors.items())
    q1 = (
        f"**Q1. Does the multiplicative joint law fit?** Mean fitting error Δe = {fit_e:.4g} "
        f"({rival_e}); mean held-out error Δh = {mult:.4g} ({rival_h}). "
    )
    held = {law: h for law, (_, h) in errors.items() if not math.isnan(h)}
    if math.isnan(mult) or not held:
        return q1 + "No held-out points, so extrapolation is not measured."
    better = [law for law, h in held.items() if h < (1.0 - BETTER_BY) * mult]
    if not better:
        named = " and ".join(held) + (" laws" if len(held) > 1 else " law")
        return q1 + f"The multiplicative law extrapolates about as well as the {named} or better."
    return q1 + f"The {min(better, key=held.get)} law extrapolates better on these runs."


def _metric_value(row: dict, name: str) -> float | None:
    """A row's generation metric as a float; None where the run has none."""
    value = row.get(name)
    if value is None or value == "" or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def generation_section(rows: Sequence[dict]) -> list[str]:
    """BLEU / chrF / ROUGE-L of decoded test examples per method, model and D_f (mean over
    seeds); no section when no finished run has any of them."""
    names = [m for m in GENERATION_METRICS if any(_metric_value(r, m) is not None for r in rows)]
    if not names:
        return []
    runs: dict[tuple, list[dict]] = collections.defaultdict(list)  # cell -> its runs' scores
    for row in rows:
        scores = {m: _metric_value(row, m) for m in names}
        if any(v is not None for v in scores.values()):
            runs[_cell_key(row)].append(scores)
    header = ["method", "model", "D_f", *(GENERATION_METRICS[m] for m in names), "seeds"]
    lines = [
        "## Generation metrics",
        "",
        "Scores (0-100) of decoded test examples with the best checkpoint, mean over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (method, _, model, d_f), scores in sorted(runs.items()):
        means = [_mean([s[m] for s in scores if s[m] is not None]) for m in names]
        cells = [method, model, f"{d_f:g}", *means, str(len(scores))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _cell_key(row: dict) -> tuple[str, float, str, float]:
    """(method, model size, model name, D_f): a cell of the table, models in order of size."""
    model = str(row.get("model_name") or row.get("model_params"))
    size = float(row.get("model_params") or 0)
    return str(row.get("method")), size, model, float(row["finetune_examples"])


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "–"
