"""The paper's questions, asked of fitted laws (PAPER.md §4-§5).

* which factor scales best: exponents side by side, with the bootstrap probability that one
  exceeds another (replicates are shared across factors, so the comparison is paired); an
  exponent whose interval spans zero or more than a factor of 3 is "not identified by these
  runs" (`exponent_identified`) and is left out of any ranking;
* the critical finetuning data size D_f^c where one method's curve crosses another's: every
  crossing inside a D_f range by bracketing + Brent on the full laws ("none in range" when
  there is none), and the paper's closed form D_f^c = H X^gamma (App. Eq. 3);
* saturation: the D_f beyond which one more doubling of D_f improves the loss by less than a
  relative threshold t, from the fitted law (with a bootstrap interval: the same point for
  every bootstrap replicate's law) and empirically from the measured points. For the
  multiplicative law the gain per doubling, (L(D) - L(2D)) / L(D) = R (1 - 2^-beta) / (R + E)
  with R = A X^-alpha D^-beta, falls monotonically in D, so the point is unique:
  D_sat = (A X^-alpha / R*)^(1/beta), R* = t E / (1 - 2^-beta - t).
"""

import dataclasses
import math

import numpy as np
from scipy import optimize

from ft_scaling.scaling import laws


@dataclasses.dataclass(frozen=True)
class Crossing:
    """Where two fitted curves cross at one X. `roots` is empty when none lie in range."""

    x: float
    roots: tuple[float, ...]
    d_range: tuple[float, float]

    @property
    def status(self) -> str:
        return "found" if self.roots else "none in range"


NOT_IDENTIFIED = "not identified by these runs"
# An interval wider than this ratio (hi / lo) does not pin an exponent down. At 1% noise a
# design of 5 model sizes over 16x misses alpha ~ 0.03 by a median 20% (tests/scaling/
# coverage_test.py); an interval of 3x says the runs cannot tell 0.02 from 0.06.
IDENTIFIED_RATIO = 3.0


def exponent_identified(interval: tuple[float, float]) -> bool | None:
    """Whether an exponent's interval pins it down.

    Returns None without an interval (no bootstrap, or too few successful replicates), False
    when the interval spans zero or its ends differ by more than IDENTIFIED_RATIO, else True.
    """
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    if low <= 0.0 <= high:
        return False
    small, large = sorted((abs(low), abs(high)))
    return large <= IDENTIFIED_RATIO * small


def exponent_comparison(samples_by_factor: dict[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """P(alpha_f1 > alpha_f2) over bootstrap replicates where both refits succeeded.

    Args:
      samples_by_factor: {factor: [replicates] alpha samples (NaN where a refit failed)}.
    """
    result = {}
    for first, a in samples_by_factor.items():
        for second, b in samples_by_factor.items():
            ok = np.isfinite(a) & np.isfinite(b)
            if first != second and np.any(ok):
                result[(first, second)] = float(np.mean(a[ok] > b[ok]))
    return result


def _sign_change_roots(fun, lo: float, hi: float, samples: int) -> tuple[float, ...]:
    """All roots of fun(log d) on [lo, hi] found by sign changes on a log grid, then Brent."""
    grid = np.linspace(lo, hi, samples)
    values = fun(grid)
    roots = [float(np.exp(g)) for g, v in zip(grid, values, strict=True) if v == 0.0]
    for i in np.flatnonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0):
        roots.append(float(np.exp(optimize.brentq(fun, grid[i], grid[i + 1], xtol=1e-14))))
    return tuple(sorted(roots))


def critical_data_size(
    law: laws.Law, params_1, params_2, x: float, d_range=(1e2, 1e10), samples: int = 2001
) -> Crossing:
    """D_f where law(params_1) == law(params_2) at factor value `x`, searched in `d_range`.

    Root finding is on the full laws (the paper uses scipy's fsolve from one guess; bracketing
    finds every crossing in range and cannot report a spurious one).
    """
    gap = lambda log_d: law(x, np.exp(log_d), params_1) - law(x, np.exp(log_d), params_2)
    lo, hi = np.log(d_range[0]), np.log(d_range[1])
    return Crossing(float(x), _sign_change_roots(gap, lo, hi, samples), tuple(d_range))


def closed_form_critical(params_1, params_2) -> tuple[float, float]:
    """The paper's (H, gamma): D_f^c = H X^gamma when the gap is held at E_1 - E_2 (App. Eq. 3).

    H = (A_1 / A_2)^(1 / (beta_1 - beta_2)), gamma = (alpha_2 - alpha_1) / (beta_1 - beta_2),
    method 1 being the paper's "A" in "A vs B". Solves A_1 X^-a1 D^-b1 = A_2 X^-a2 D^-b2.
    """
    beta_gap = params_1["beta"] - params_2["beta"]
    if beta_gap == 0:  # parallel in D_f: the gap never closes, there is no D_f^c
        return float("nan"), float("nan")
    # In logs: with nearly equal betas H is beyond float range (inf or 0), not an error.
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        h = np.exp(np.log(params_1["A"] / params_2["A"]) / beta_gap)
    gamma = (params_2["alpha"] - params_1["alpha"]) / beta_gap
    return float(h), float(gamma)


def relative_gain_per_doubling(law: laws.Law, params, x, d_f):
    """(L(D_f) - L(2 D_f)) / L(D_f): the relative improvement one doubling of data buys."""
    here = law(x, d_f, params)
    return (here - law(x, 2.0 * np.asarray(d_f), params)) / here


def saturation_point(
    law: laws.Law, params, x: float, threshold: float = 0.01, d_range=(1e2, 1e12)
) -> float | None:
    """Smallest D_f in `d_range` from which a doubling gains less than `threshold` (relative).

    Returns d_range[0] if the gain is already below the threshold there, None if it never
    falls below it within the range (or the law is not finite there). Scans a log grid for the
    first drop below the threshold, then refines it with Brent's method.
    """
    grid = np.linspace(np.log(d_range[0]), np.log(d_range[1]), 2001)
    excess = lambda log_d: relative_gain_per_doubling(law, params, x, np.exp(log_d)) - threshold
    with np.errstate(all="ignore"):
        values = excess(grid)
    below = np.flatnonzero(np.isfinite(values) & (values < 0))
    if len(below) == 0:
        return None
    first = below[0]
    if first == 0:
        return float(d_range[0])
    if not np.isfinite(values[first - 1]):
        return float(np.exp(grid[first]))
    return float(np.exp(optimize.brentq(excess, grid[first - 1], grid[first], xtol=1e-14)))


def empirical_saturation(d_f, loss, threshold: float = 0.01) -> float | None:
    """The measured D_f from which every further measured step gains less than `threshold`
    per doubling.

    The gain between consecutive measured sizes is ((L_i - L_i+1) / L_i) / log2(D_i+1 / D_i).
    Points are averaged per D_f first. "Every further step" rather than the first one below
    the threshold: a noisy dip must not declare saturation when a later doubling still pays.
    Returns None when the last measured step still gains at least `threshold`.
    """
    d_f, loss = np.asarray(d_f, np.float64), np.asarray(loss, np.float64)
    unique, index = np.unique(d_f, return_inverse=True)
    mean = np.bincount(index, weights=loss) / np.bincount(index)
    gain = (mean[:-1] - mean[1:]) / mean[:-1] / np.log2(unique[1:] / unique[:-1])
    paying = np.flatnonzero(~(gain < threshold))  # NaN gains count as still paying
    if len(gain) == 0 or (len(paying) and paying[-1] == len(gain) - 1):
        return None
    return float(unique[paying[-1] + 1]) if len(paying) else float(unique[0])


@dataclasses.dataclass(frozen=True)
class Saturation:
    """Where more data stops paying at one factor value X.

    Attributes:
      x: the factor value; threshold: the relative gain per doubling that counts as saturated.
      d_f: the fitted law's saturation point (None: not reached within `d_range`).
      status: 'found', 'at range start' (saturated already at d_range[0]) or 'beyond range'.
      interval: central bootstrap interval of d_f (inf where replicates never saturate in
        range; NaN without replicates).
      replicates: bootstrap replicates whose law was finite.
      empirical: `empirical_saturation` of the measured points (None without points or when
        the data still pays at the largest measured D_f).
      gain_at_largest: the law's relative gain per doubling at the largest measured D_f
        (None without points): how far from saturation the data ends.
    """

    x: float
    threshold: float
    d_f: float | None
    status: str
    interval: tuple[float, float]
    replicates: int
    empirical: float | None
    gain_at_largest: float | None = None


def saturation_interval(law: laws.Law, names, samples, x, threshold, d_range, level=0.95):
    """(interval, replicates used) of the saturation point over bootstrap replicates.

    Args:
      law: the law; names: its parameter names in the column order of `samples`.
      samples: [replicates, params] natural values; rows with a NaN (failed refit) are skipped.
      x, threshold, d_range: as in `saturation_point`.
      level: central interval level.

    Replicates that never saturate in range count as +inf; percentiles are taken without
    interpolation (numpy's 'inverted_cdf') so that inf is an ordinary largest value.
    """
    samples = np.asarray(samples, np.float64).reshape(-1, len(names))
    ok = samples[np.all(np.isfinite(samples), axis=1)]
    points = [
        saturation_point(law, dict(zip(names, row, strict=True)), x, threshold, d_range)
        for row in ok
    ]
    values = np.array([np.inf if p is None else p for p in points])
    if len(values) < 2:
        return (float("nan"), float("nan")), len(values)
    tail = 0.5 * (1.0 - level)
    low, high = np.quantile(values, [tail, 1.0 - tail], method="inverted_cdf")
    return (float(low), float(high)), len(values)


def saturation(
    law: laws.Law,
    params,
    x: float,
    threshold: float = 0.01,
    bootstrap=None,
    measured=None,
    d_range=(1.0, 1e12),
    level: float = 0.95,
) -> Saturation:
    """The fitted saturation point at `x`, its bootstrap interval and the empirical one.

    Args:
      law, params, x, threshold, d_range: as in `saturation_point`.
      bootstrap: [replicates, params] natural values in the order of `params`, or None.
      measured: (d_f [points], loss [points]) measured at `x`, or None.
      level: central interval level.
    """
    point = saturation_point(law, params, x, threshold, d_range)
    status = "beyond range" if point is None else "found"
    if point is not None and point <= d_range[0]:
        status = "at range start"
    interval, used = (float("nan"), float("nan")), 0
    if bootstrap is not None and len(bootstrap):
        names = list(params)
        interval, used = saturation_interval(law, names, bootstrap, x, threshold, d_range, level)
    empirical, gain = None, None
    if measured is not None and len(measured[0]):
        empirical = empirical_saturation(*measured, threshold)
        gain = float(relative_gain_per_doubling(law, params, x, np.max(measured[0])))
    return Saturation(float(x), threshold, point, status, interval, used, empirical, gain)
