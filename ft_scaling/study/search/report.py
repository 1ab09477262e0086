"""The search report: trials, best config, and how well early ranks predict final ranks.

    OUT/results.sqlite (trial rows) -> OUT/trials.csv           one row per run (config)
                                    -> OUT/early_vs_final.png   early vs final metric
                                    -> OUT/search_report.md     the table, best config and
                                                                the rank-correlation check

The check (Oliver & Wang 2024 report that ranking candidates at ~20% of their budget picks 4
of the final top 5) is measured over the runs that have both metrics: Spearman's rho between
early and final metric with its p-value (scipy.stats.spearmanr), and how many of the early
top-k are among the final top-k. Ties in a ranking go to the earlier trial.
"""

import dataclasses
import io
import math
import os

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from ft_scaling import files
from ft_scaling.study import store as store_lib
from ft_scaling.study.search import progress as search_progress

OVERLAP_K = 5


@dataclasses.dataclass(frozen=True)
class RankAgreement:
    """Agreement of two rankings of the same runs (lower metric = better)."""

    runs: int
    rho: float
    p_value: float
    k: int
    overlap: int


def top_k(values, k: int) -> set[int]:
    """Indices of the k smallest values; ties go to the lower index."""
    return {int(i) for i in np.argsort(np.asarray(values, np.float64), kind="stable")[:k]}


def rank_agreement(early, final, k: int = OVERLAP_K) -> RankAgreement:
    """Spearman rho (and p-value) of early vs final metric, and the top-k overlap.

    Args:
      early, final: [runs] metrics of the same runs, in the same order.
      k: size of the top sets compared (clipped to the number of runs).
    """
    early, final = np.asarray(early, np.float64), np.asarray(final, np.float64)
    if early.shape != final.shape:
        raise ValueError(f"early {early.shape} and final {final.shape} metrics differ in shape")
    k = min(k, len(early))
    overlap = len(top_k(early, k) & top_k(final, k))
    if len(early) < 3:  # a correlation of two points is ±1 by construction
        return RankAgreement(len(early), math.nan, math.nan, k, overlap)
    result = stats.spearmanr(early, final)
    return RankAgreement(len(early), float(result.statistic), float(result.pvalue), k, overlap)


def load(out_dir: str) -> tuple[dict, list[dict]]:
    """(search settings, trial rows ordered by first trial number)."""
    settings = files.read_json(files.path(out_dir) / "search_settings.json")
    store = store_lib.ResultsStore(store_lib.store_of(out_dir))
    rows = store.rows(kind="trial")
    store.close()
    return settings, sorted(rows, key=lambda r: min(r.get("trials") or [math.inf]))


def ranks(rows: list[dict], key: str) -> dict[str, int]:
    """run id -> 1-based rank by `key` among the rows that have it."""
    have = [r for r in rows if r.get(key) is not None]
    order = np.argsort([r[key] for r in have], kind="stable")
    return {have[i]["run_id"]: rank for rank, i in enumerate(order, start=1)}


def agreement(rows: list[dict], metric: str, final: str = "final") -> RankAgreement | None:
    """Rank agreement of `early_<metric>` with `<final>_<metric>` ('final': best of the run,
    'last': at its last step) over the rows that have both; None when none has."""
    early_key, final_key = f"early_{metric}", f"{final}_{metric}"
    both = [r for r in rows if r.get(final_key) is not None and r.get(early_key) is not None]
    if not both:
        return None
    return rank_agreement([r[early_key] for r in both], [r[final_key] for r in both])


def write_csv(rows: list[dict], metric: str, path: str) -> None:
    """OUT/trials.csv: one row per run with its params, metrics and both ranks."""
    keys = sorted({k for r in rows for k in r.get("params", {})})
    early, final = ranks(rows, f"early_{metric}"), ranks(rows, f"final_{metric}")
    fields = ["trials", "run_id", "status", *keys, "early_step", "total_steps"]
    fields += ["early_dev_loss", "early_dev_ppl", "early_rank", "final_dev_loss", "final_dev_ppl"]
    fields += ["final_rank", "test_loss", "test_ppl", "pruned", "run_dir"]
    table = []
    for row in rows:
        out = {**row, **row.get("params", {}), "trials": " ".join(map(str, row["trials"]))}
        out.update(early_rank=early.get(row["run_id"]), final_rank=final.get(row["run_id"]))
        table.append(out)
    files.atomic_write_csv(path, table, fields)


def plot(rows: list[dict], metric: str, result: RankAgreement | None, path: str) -> bool:
    """Early vs final: the metric and the ranks Spearman compares, early top-k in orange;
    False when no run has both."""
    both = [r for r in rows if r.get(f"final_{metric}") is not None]
    if not both:
        return False
    early = np.array([r[f"early_{metric}"] for r in both])
    final = np.array([r[f"final_{metric}"] for r in both])
    k = min(OVERLAP_K, len(both))
    best = top_k(early, k)
    colours = ["tab:orange" if i in best else "tab:blue" for i in range(len(both))]
    figure = Figure(figsize=(9.0, 4.0), layout="constrained")
    values, ranked = figure.subplots(1, 2)
    early_rank, final_rank = stats.rankdata(early), stats.rankdata(final)
    for axes, x, y in ((values, early, final), (ranked, early_rank, final_rank)):
        axes.scatter(x, y, c=colours, s=24)
        for row, xi, yi in zip(both, x, y, strict=True):
            axes.annotate(f"#{row['trials'][0]}", (xi, yi), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")  # fmt: skip
    values.set(xlabel=f"early {metric}", ylabel=f"final {metric} (best of the run)")
    _zoom(values, both, early, final)
    ranked.plot([1, len(both)], [1, len(both)], color="grey", lw=0.8, ls="--")
    ranked.axhspan(0.5, k + 0.5, color="tab:orange", alpha=0.1)
    ranked.set(xlabel="early rank", ylabel="final rank")
    if result is not None and math.isfinite(result.rho):
        figure.suptitle(
            f"Spearman ρ = {result.rho:.3f}; {result.overlap} of the early top {result.k} "
            f"(orange) in the final top {result.k} (shaded)",
            fontsize=10,
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    files.atomic_write_bytes(path, buffer.getvalue())
    return True


def _zoom(axes, rows: list[dict], early: np.ndarray, final: np.ndarray) -> None:
    """Leaves far outliers (a diverged trial; beyond 3 IQR) off the metric panel, named in its
    title, so that they do not squash the trials that matter."""
    q1, q3 = np.percentile(early, [25, 75])
    inside = early <= q3 + 3 * max(q3 - q1, 1e-12)
    if inside.all() or inside.sum() < 2:
        return
    for set_limits, values in ((axes.set_xlim, early[inside]), (axes.set_ylim, final[inside])):
        pad = 0.05 * max(float(np.ptp(values)), 1e-6)
        set_limits(values.min() - pad, values.max() + pad)
    off = ", ".join(f"#{r['trials'][0]}" for r, i in zip(rows, inside, strict=True) if not i)
    axes.set_title(f"off scale: {off}", fontsize=8)


def write_report(out_dir: str) -> str:
    """Writes trials.csv, early_vs_final.png and search_report.md; returns the report's path."""
    settings, rows = load(out_dir)
    metric = settings["metric"]
    write_csv(rows, metric, os.path.join(out_dir, "trials.csv"))
    result = agreement(rows, metric)
    plotted = plot(rows, metric, result, os.path.join(out_dir, "early_vs_final.png"))
    lines = _header(settings, rows) + _table(rows, metric) + _best(rows, metric)
    stalled = sum(
        r.get(f"final_{metric}") is not None and r[f"final_{metric}"] == r[f"early_{metric}"]
        for r in rows
    )
    last = agreement(rows, metric, "last")
    lines += _agreement_section(settings, result, last, stalled, plotted)
    path = os.path.join(out_dir, "search_report.md")
    files.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _header(settings: dict, rows: list[dict]) -> list[str]:
    statuses = [r["status"] for r in rows]
    trained = sum((r.get("early_wall_time") or 0) + (r.get("final_wall_time") or 0) for r in rows)
    return [
        f"# Search report: {settings['name']}",
        "",
        f"{settings['method']} on {settings['model_name']}, D_f = {settings['finetune_examples']}; "
        f"Optuna TPE (multivariate, {settings['startup_trials']} random startup trials, seed "
        f"{settings['seed']}), pruner: {settings['pruner']}.",
        f"Early metric: `{settings['metric']}` after {settings['early_fraction']:.0%} of each "
        "trial's steps (on its full schedule); final metric: best "
        f"`{settings['metric']}` of the full run. Continued to the full budget: "
        + ("all trials." if settings["full_budget_for"] == "all" else f"top {settings['top_k']}."),
        f"{len(rows)} runs: {statuses.count('finished')} at full budget, "
        f"{statuses.count('early')} stopped early, {statuses.count('failed')} failed; "
        f"training time {trained:.0f} s. Table: `trials.csv`.",
        "",
    ]


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def _table(rows: list[dict], metric: str) -> list[str]:
    keys = sorted({k for r in rows for k in r.get("params", {})})
    early, final = ranks(rows, f"early_{metric}"), ranks(rows, f"final_{metric}")
    header = ["trial", *keys, "steps (early/total)", f"early {metric}", "early rank"]
    header += [f"final {metric}", "final rank", "test loss", "status"]
    lines = ["## Trials", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        params = r.get("params", {})
        cells = [" ".join(f"#{t}" for t in r["trials"])]
        cells += [_fmt(params[k]) if isinstance(params.get(k), float) else str(params.get(k))
                  for k in keys]  # fmt: skip
        cells += [f"{r.get('early_step', '–')}/{r.get('total_steps', '–')}"]
        cells += [_fmt(r.get(f"early_{metric}")), str(early.get(r["run_id"], "–"))]
        cells += [_fmt(r.get(f"final_{metric}")), str(final.get(r["run_id"], "–"))]
        cells += [_fmt(r.get("test_loss")), r["status"] + (" (pruned)" if r.get("pruned") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _best(rows: list[dict], metric: str) -> list[str]:
    for stage in ("final", "early"):
        have = [r for r in rows if r.get(f"{stage}_{metric}") is not None]
        if have:
            best = min(have, key=lambda r: r[f"{stage}_{metric}"])
            bindings = "\n".join(f"    --gin.{k}={v!r}" for k, v in sorted(best["params"].items()))
            return [
                "## Best config",
                "",
                f"Trial #{best['trials'][0]} by {stage} {metric} "
                f"({best[f'{stage}_{metric}']:.4f}; test loss {_fmt(best.get('test_loss'))}): "
                f"{search_progress.describe(best['params'])}",
                "",
                bindings,
                "",
            ]
    return ["## Best config", "", "No trial finished.", ""]


def _sentence(result: RankAgreement, final: str) -> str:
    rho = "n/a (fewer than 3 runs)" if math.isnan(result.rho) else f"{result.rho:.3f}"
    p_value = "" if math.isnan(result.p_value) else f" (p = {result.p_value:.2g})"
    return (
        f"Spearman ρ(early, {final}) = {rho}{p_value}; {result.overlap} of the early top "
        f"{result.k} are in the {final} top {result.k}"
    )


def _agreement_section(settings, result, last, stalled: int, plotted: bool) -> list[str]:
    lines = ["## Do early ranks predict final ranks?", ""]
    if result is None:
        return lines + ["No run has both an early and a final metric.", ""]
    lines += [
        f"Over the {result.runs} runs with both metrics: **{_sentence(result, 'final')}**. "
        "Oliver & Wang (2024) report 4 of 5 at 20% of the budget.",
        "",
    ]
    if last is not None:
        lines += [
            "Final here is the best dev metric of the run (the checkpoint a run keeps), which "
            f"equals the early one when a run gets no better after its early point ({stalled} "
            f"of {result.runs} runs). Against the dev metric at the last step instead: "
            f"{_sentence(last, 'last')}.",
            "",
        ]
    if settings["full_budget_for"] != "all":
        lines += [
            f"Only the early top {settings['top_k']} ran to the full budget, so the check sees "
            "only them (the overlap is then near-complete by construction); set "
            "`Search.full_budget_for = 'all'` to measure it over every trial.",
            "",
        ]
    if plotted:
        lines += ["![early vs final](early_vs_final.png)", ""]
    return lines
