"""Figures like the paper's (PAPER.md §7): fitted curves over observed points, and method crossings.

Plotting only reads fit results; it never fits. Figures are built with `matplotlib.figure.Figure`
directly (no pyplot), so no global backend state is touched and it works headless.

  * `plot_factor_fit`: loss vs D_f on log axes, one curve per factor value; circles = fitting
    points, triangles = held-out points; annotated with Delta_e, Delta_h, alpha and beta; stars
    mark each curve's saturation point with its bootstrap interval as a horizontal bar, and
    a dashed tick the empirical one.
  * `plot_method_comparison`: the methods' curves vs D_f at one factor value with every
    crossing marked, and (Fig. 5) the critical D_f against the factor value per method pair.
  * `plot_table_fit`: both kinds for every setting and method comparison of a `TableFit`.

Each figure is rendered into memory and written atomically (`ft_scaling.files`).
"""

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ft_scaling import files
from ft_scaling.scaling import analysis, laws
from ft_scaling.scaling.procedure import FactorFit
from ft_scaling.scaling.table_fit import FittedSetting, TableFit


def save(figure: Figure, stem: str) -> list[str]:
    """Writes `stem`.png and `stem`.pdf, each atomically; returns the paths."""
    paths = []
    for extension in ("png", "pdf"):
        buffer = io.BytesIO()  # rendered whole first: a reader never sees half a figure
        figure.savefig(buffer, format=extension, dpi=150, bbox_inches="tight")
        paths.append(f"{stem}.{extension}")
        files.atomic_write_bytes(paths[-1], buffer.getvalue())
    return paths


def _annotation(fits: Sequence[FactorFit]) -> str:
    first = fits[0]
    lines = [f"$\\Delta_e$={first.delta_e:.3g}  $\\Delta_h$={first.delta_h:.3g}"]
    if first.value is None:
        lines.append(f"$\\alpha$={first.params['alpha']:.3g}  $\\beta$={first.params['beta']:.3g}")
    else:
        betas = ", ".join(f"{f.params['beta']:.3g}" for f in fits)
        lines.append(f"$\\beta$ = {betas}")
    return "\n".join(lines)


def _d_limits(fits: Sequence[FactorFit], saturations) -> tuple[float, float]:
    """The plotted D_f range: the measured one, widened to show saturation points lying
    within a factor of 100 of it (farther ones would squash the data; the table has them)."""
    low = min(f.points.d_f.min() for f in fits)
    high = max(f.points.d_f.max() for f in fits)
    marks = [s.d_f for s in saturations if s.d_f is not None and low / 100 <= s.d_f <= high * 100]
    return min([low, *marks]) / 1.5, max([high, *marks]) * 1.5


def _mark_saturation(axes, law, params, saturation, colour, d_limits) -> None:
    """A star on the curve at the saturation point, its bootstrap interval as a bar."""
    lo_d, hi_d = d_limits
    if saturation.empirical is not None:
        axes.axvline(saturation.empirical, color=colour, ls="--", lw=0.6, alpha=0.6)
    if saturation.d_f is None or not lo_d <= saturation.d_f <= hi_d:
        return
    y = float(law(saturation.x, saturation.d_f, params))
    low, high = saturation.interval
    if np.isfinite(low) and np.isfinite(high):
        axes.plot([max(low, lo_d), min(high, hi_d)], [y, y], color=colour, lw=2.5, alpha=0.35)
    axes.scatter([saturation.d_f], [y], color=colour, marker="*", s=90, zorder=3,
                 edgecolors="black", linewidths=0.4)  # fmt: skip


def _mark_saturations(axes, fits, saturations, colour_of: dict, d_limits) -> None:
    """Each curve's saturation mark (`_mark_saturation`) and their legend entry."""
    if not saturations:
        return
    by_x = {s.x: s for s in saturations}
    for fit_ in fits:
        law = laws.get_law(fit_.law)
        for value in np.unique(fit_.points.x):
            if float(value) in by_x:
                colour = colour_of[float(value)]
                _mark_saturation(axes, law, fit_.params, by_x[float(value)], colour, d_limits)
    label = f"saturation ({saturations[0].threshold:.0%}/doubling)"
    axes.scatter([], [], color="grey", marker="*", s=60, label=label)


def plot_factor_fit(
    fits: Sequence[FactorFit],
    title: str,
    stem: str,
    saturations: Sequence[analysis.Saturation] = (),
) -> list[str]:
    """One panel: observed points and fitted curves per factor value vs D_f (log axes).

    Args:
      fits: a joint-law fit of one factor (one element), or the single-factor curves of one
        factor (one element per factor value).
      title: panel title.
      stem: output path without extension.
      saturations: `analysis.saturation` per factor value (marked when in the plotted range).
    """
    figure = Figure(figsize=(5.5, 4.0), layout="constrained")
    axes = figure.add_subplot()
    values = sorted({float(v) for f in fits for v in f.points.x})
    colour_of = dict(zip(values, _colours(len(values)), strict=True))
    d_limits = _d_limits(fits, saturations)
    for fit_ in fits:
        _plot_curves(axes, fit_, colour_of, d_limits)
    _mark_saturations(axes, fits, saturations, colour_of, d_limits)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("finetuning examples $D_f$")
    axes.set_ylabel("loss")
    axes.set_title(title, fontsize=9)
    axes.text(0.98, 0.98, _annotation(fits), transform=axes.transAxes, ha="right", va="top",
              fontsize=8)  # fmt: skip
    axes.legend(fontsize=6, loc="lower left")
    return save(figure, stem)


def _plot_curves(axes, fit_: FactorFit, colour_of: dict, d_limits) -> None:
    """Per factor value: the fitted curve, fitting points (circles), held-out ones (triangles)."""
    law, points = laws.get_law(fit_.law), fit_.points
    d_grid = np.geomspace(*d_limits, 200)
    for value in np.unique(points.x):
        colour = colour_of[float(value)]
        at = points.x == value
        axes.plot(d_grid, law(value, d_grid, fit_.params), color=colour, lw=1.2,
                  label=f"X={value:.3g}")  # fmt: skip
        fitting, held = at & ~points.held_out, at & points.held_out
        axes.scatter(points.d_f[fitting], points.loss[fitting], color=colour, marker="o", s=18)
        axes.scatter(points.d_f[held], points.loss[held], color=colour, marker="^", s=30)


def _colours(count: int) -> list:
    return [colormaps["viridis"](v) for v in np.linspace(0.0, 0.9, max(count, 1))]


def plot_method_comparison(
    fits_by_method: dict[str, FactorFit],
    x_value: float,
    crossings: dict[tuple[str, str], list[analysis.Crossing]],
    title: str,
    stem: str,
) -> list[str]:
    """Methods' curves at `x_value` with crossings marked, and critical D_f against X.

    Args:
      fits_by_method: {method: its fit of one factor}, all of the same law.
      x_value: factor value at which the left panel compares the curves.
      crossings: {(method_1, method_2): crossings at each X} from `critical_data_size`.
      title: figure title.
      stem: output path without extension.
    """
    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = figure.subplots(1, 2)
    _compare_curves(left, fits_by_method, x_value, crossings)
    _critical_sizes(right, next(iter(fits_by_method.values())).factor, crossings)
    figure.suptitle(title, fontsize=10)
    return save(figure, stem)


def _compare_curves(axes, fits_by_method: dict, x_value: float, crossings: dict) -> None:
    """Left panel: the methods' curves at `x_value`, each crossing there marked and labelled."""
    d_lo = min(f.points.d_f.min() for f in fits_by_method.values()) / 10
    d_hi = max(f.points.d_f.max() for f in fits_by_method.values()) * 10
    d_grid = np.geomspace(d_lo, d_hi, 300)
    for method, fit_ in fits_by_method.items():
        law = laws.get_law(fit_.law)
        axes.plot(d_grid, law(x_value, d_grid, fit_.params), label=method)
    for (first, second), per_x in crossings.items():
        for crossing in per_x:
            if np.isclose(crossing.x, x_value):
                for root in crossing.roots:
                    axes.axvline(root, color="grey", ls="--", lw=0.8)
                    axes.annotate(f"{first}={second}\n{root:.3g}", (root, axes.get_ylim()[1]),
                                  fontsize=7, va="top")  # fmt: skip
    axes.set(xscale="log", yscale="log", xlabel="finetuning examples $D_f$", ylabel="loss")
    axes.set_title(f"X = {x_value:.3g}", fontsize=9)
    axes.legend(fontsize=7)


def _critical_sizes(axes, factor: str, crossings: dict) -> None:
    """Right panel (the paper's Fig. 5): critical D_f against the factor value per pair."""
    for (first, second), per_x in crossings.items():
        xs = [c.x for c in per_x for _ in c.roots]
        roots = [r for c in per_x for r in c.roots]
        axes.plot(xs, roots, "o-", label=f"{first} vs {second}")
    axes.set(xlabel=f"X ({factor})", ylabel="critical $D_f$")
    if any(c.roots for per_x in crossings.values() for c in per_x):
        axes.set(xscale="log", yscale="log")
        axes.legend(fontsize=7)
    else:  # log axes cannot be empty; say so instead
        axes.text(0.5, 0.5, "no crossing in range", ha="center", transform=axes.transAxes)


def plot_table_fit(result: TableFit, out_dir: str) -> list[str]:
    """Every figure of a `table_fit.TableFit` into `out_dir`; returns the paths.

    Per setting and factor: OUT/<group values>_<factor>.{png,pdf} (`plot_factor_fit`, with the
    saturation marks); per method comparison: OUT/compare_<group>_<factor>_<m1>_vs_<m2>.*.
    """
    paths = []
    for setting in result.settings:
        paths += _plot_setting(setting, out_dir)
    for comparison in result.comparisons:
        x_value = min(c.x for c in comparison.crossings)
        label = "_".join(str(v) for v in comparison.group.values()) or "all"
        pair = "_vs_".join(comparison.pair)
        stem = str(files.path(out_dir) / f"compare_{label}_{comparison.factor}_{pair}")
        crossings = {comparison.pair: comparison.crossings}
        title = f"{label}: {comparison.pair[0]} vs {comparison.pair[1]} ({comparison.factor})"
        paths += plot_method_comparison(comparison.fits, x_value, crossings, title, stem)
    return paths


def _plot_setting(setting: FittedSetting, out_dir: str) -> list[str]:
    """One `plot_factor_fit` panel per factor (a single-factor law's curves share one)."""
    group, fitted = setting.group, setting.fit
    label = "_".join(str(v) for v in group.values()) or "all"
    by_factor: dict[str, list] = {}
    marks: dict[str, list] = {}
    for key, factor_fit in fitted.factors.items():
        by_factor.setdefault(factor_fit.factor, []).append(factor_fit)
        marks.setdefault(factor_fit.factor, []).extend(setting.saturation[key])
    paths = []
    for factor, fits in by_factor.items():
        title = f"{', '.join(map(str, group.values()))}: {fitted.law} law, {factor}"
        stem = str(files.path(out_dir) / f"{label}_{factor}")
        paths += plot_factor_fit(fits, title, stem, marks[factor])
    return paths
