"""Serialising fit results: fit.json (full precision), summary.md, starts.csv (every start).

Values are written as Python floats via `repr`, i.e. never rounded; only the markdown summary
formats numbers for reading. NaN (no held-out points, a failed bootstrap) becomes JSON null.
"""

import csv
import json
import math

import numpy as np

from ft_scaling.scaling import fit, laws
from ft_scaling.scaling.procedure import FactorFit, SettingFit


def _clean(value):
    """JSON-safe: numpy -> Python, NaN/inf -> None, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fit_summary(result: fit.Fit) -> dict:
    """The best fit of one design, with its convergence record."""
    return {
        "params": result.params,
        "free": list(result.free),
        "loss": result.loss,
        "status": result.status,
        "converged": result.converged,
        "n_points": result.n_points,
        "n_starts": len(result.starts.loss),
        "n_converged_starts": result.n_converged_starts,
        "edge_params": list(result.edge_params),
    }


def factor_summary(factor_fit: FactorFit) -> dict:
    return {
        "factor": factor_fit.factor,
        "value": factor_fit.value,
        "law": factor_fit.law,
        "params": factor_fit.params,
        "intervals": {k: list(v) for k, v in factor_fit.intervals.items()},
        "delta_e": factor_fit.delta_e,
        "delta_h": factor_fit.delta_h,
        "n_fit_points": int(np.count_nonzero(~factor_fit.points.held_out)),
        "n_held_out_points": int(np.count_nonzero(factor_fit.points.held_out)),
        "bootstrap_replicates": len(factor_fit.bootstrap),
        "bootstrap_ok": factor_fit.bootstrap_ok,
        "fit": fit_summary(factor_fit.fit),
    }


def setting_summary(group: dict, setting: SettingFit, extra: dict) -> dict:
    return {
        "group": group,
        "procedure": setting.procedure,
        "law": setting.law,
        "held_out_rule": setting.held_out_rule,
        "stage1": fit_summary(setting.stage1) if setting.stage1 else None,
        "factors": {k: factor_summary(v) for k, v in setting.factors.items()},
        **extra,
    }


def write_json(path: str, document: dict) -> None:
    with open(path, "w") as handle:
        json.dump(_clean(document), handle, indent=1)
        handle.write("\n")


def _fmt(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _cell(factor_fit: FactorFit, name: str) -> str:
    if name not in factor_fit.params:
        return "–"
    low, high = factor_fit.intervals.get(name, (math.nan, math.nan))
    return f"{_fmt(factor_fit.params[name])} [{_fmt(low)}, {_fmt(high)}]"


def markdown(settings: list[tuple[dict, SettingFit]], comparisons: list[dict]) -> str:
    """Summary tables: one row per setting and factor; then the critical data sizes."""
    names = ("A", "alpha", "B", "beta", "E")
    header = ["group", "factor", *names, "Δe", "Δh", "status", "bootstrap ok"]
    lines = ["# Scaling-law fits", "", "Values: best fit [95% bootstrap interval].", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, setting in settings:
        label = ", ".join(f"{k}={v}" for k, v in group.items())
        for key, factor_fit in setting.factors.items():
            status = factor_fit.fit.status + (
                f" (edge: {','.join(factor_fit.fit.edge_params)})"
                if factor_fit.fit.edge_params
                else ""
            )
            row = [label, key, *(_cell(factor_fit, n) for n in names)]
            row += [_fmt(factor_fit.delta_e), _fmt(factor_fit.delta_h), status]
            row += [f"{factor_fit.bootstrap_ok}/{len(factor_fit.bootstrap)}"]
            lines.append("| " + " | ".join(row) + " |")
    if comparisons:
        lines += ["", "## Critical finetuning data size", ""]
        lines += [
            "| group | factor | pair | H | γ | crossings (X: D_f^c) |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            found = "; ".join(
                f"{x['x']:.3g}: " + (", ".join(f"{r:.4g}" for r in x["roots"]) or x["status"])
                for x in c["crossings"]
            )
            label = ", ".join(f"{k}={v}" for k, v in c["group"].items())
            pair = f"{c['pair'][0]} vs {c['pair'][1]}"
            closed = c["closed_form"]
            lines.append(
                f"| {label} | {c['factor']} | {pair} | {_fmt(closed['H'])} | "
                f"{_fmt(closed['gamma'])} | {found} |"
            )
    return "\n".join(lines) + "\n"


def write_starts(path: str, settings: list[tuple[dict, SettingFit]]) -> None:
    """Every start of every fit: initial and final parameters (fitted coordinates), status."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "fit", "start", "param", "init", "final", "loss", "status",
                         "iterations"])  # fmt: skip
        for group, setting in settings:
            label = ";".join(f"{k}={v}" for k, v in group.items())
            fits = [("stage1", setting.stage1)] if setting.stage1 else []
            fits += [(key, f.fit) for key, f in setting.factors.items()]
            for name, result in fits:
                _write_fit_starts(writer, label, name, result)


def _write_fit_starts(writer, label: str, name: str, result: fit.Fit) -> None:
    starts = result.starts
    for index in range(len(starts.loss)):
        for column, param in enumerate(result.free):
            coordinate = f"log {param}" if laws.base_name(param) in ("A", "B", "E") else param
            writer.writerow([
                label, name, index, coordinate, repr(float(starts.init[index, column])),
                repr(float(starts.final[index, column])), repr(float(starts.loss[index])),
                starts.status[index], int(starts.iterations[index]),
            ])  # fmt: skip
