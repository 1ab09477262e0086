"""Robust multi-start fitting of a law's design: summed Huber loss, L-BFGS from a grid.

The paper's procedure (PAPER.md §5, after Hoffmann et al. 2022): minimise the *summed* Huber
loss (delta = 1e-3) of the residual L_hat - L over theta = (log A, alpha, beta, log E), with
L-BFGS started from every point of a grid, and keep the best. Options: squared loss, and the
Chinchilla residual log L_hat - log L with log L_hat = logsumexp_k(u_k) (DESIGN.md §8).

All starts (and, for the bootstrap, all replicates) are one batch for `lbfgs.minimize`:

    rows = replicates x starts; row r fits target[r // S] with weight[r // S]
    z = T theta   whitening: T from the QR of the stacked design, so the columns of the
                  design seen by L-BFGS are orthonormal (log X ~ 21 +- 1.4 makes log A and
                  alpha nearly collinear otherwise); an exact linear map, undone afterwards.

The rectified law's pre-learned data size D_l enters its D_f-dependent term nonlinearly,
u -= softplus(log D_l - beta log D_f) (`Rectifier`, see laws.py); its zero design column is left
unwhitened, and with D_l and beta both fixed the correction is a constant offset.

Every start's result and status is kept (`Starts`; starts far worse than a converged one after
50 iterations stop as 'abandoned', see `lbfgs.LbfgsOptions`). The best start is the lowest-loss
converged one unless an unconverged start is lower still, and then `Fit.status` says so; the
best start's basin is checked against the grid's edge (`Fit.edge_params`). Points with zero
weight in every replicate (held out) are dropped from the objective.
"""

import dataclasses
import itertools

import numpy as np
from scipy import special

from ft_scaling.scaling import laws, lbfgs
from ft_scaling.scaling.errors import ScalingInputError

# Initialisation ranges per parameter kind, in fitted coordinates (logs for A, B, E). They
# cover the paper's Table 4 (log A in 3..12, exponents 0..0.52) with room; the winner's edge
# flag tells when they do not.
GRID_RANGES = {
    "A": (0.0, 25.0),
    "B": (0.0, 25.0),
    "alpha": (0.0, 1.0),
    "beta": (0.0, 1.0),
    "E": (-3.0, 1.0),
    # log D_l: D_l is compared with D_f^beta (1 .. 1e4 for the grids here), e^-2 .. e^12.
    laws.PRE_LEARNED: (-2.0, 12.0),
}
_EPS = np.finfo(np.float64).eps


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How to fit. Defaults are the paper's: summed Huber, delta 1e-3, raw residual."""

    loss: str = "huber"  # "huber" | "squared"
    delta: float = 1e-3
    residual: str = "raw"  # "raw": L_hat - L (paper); "log": log L_hat - log L (Chinchilla)
    n_starts: int = 500
    optimizer: lbfgs.LbfgsOptions = lbfgs.LbfgsOptions()

    def __post_init__(self):
        if self.loss not in ("huber", "squared"):
            raise ValueError(f"loss must be 'huber' or 'squared', got {self.loss!r}")
        if self.residual not in ("raw", "log"):
            raise ValueError(f"residual must be 'raw' or 'log', got {self.residual!r}")


@dataclasses.dataclass(frozen=True)
class Starts:
    """Every start of one fit. Parameters are in fitted coordinates (logs of A, B, E)."""

    init: np.ndarray  # [starts, params]
    final: np.ndarray  # [starts, params]
    loss: np.ndarray  # [starts]
    status: tuple[str, ...]  # [starts] lbfgs.STATUS_NAMES
    iterations: np.ndarray  # [starts]


@dataclasses.dataclass(frozen=True)
class Fit:
    """The best fit of one design. `params` holds every parameter, free and fixed, unrounded."""

    params: dict[str, float]
    free: tuple[str, ...]
    loss: float
    status: str
    converged: bool
    n_points: int
    n_converged_starts: int
    edge_params: tuple[str, ...]  # grid axes on whose edge the best basin was only found
    starts: Starts


@dataclasses.dataclass(frozen=True)
class Rectifier:
    """The rectified law's correction u -= softplus(log D_l + beta * slope) of the D_f terms.

    `slope` is the design's beta column (-log D_f on the terms that carry D_f, 0 elsewhere);
    `log_d_l` and `beta` index the free parameters.
    """

    log_d_l: int
    beta: int
    slope: np.ndarray  # [terms, points]

    def __call__(self, theta: np.ndarray):
        """(correction [rows, terms, points], d correction / d theta [rows, P]-sparse parts)."""
        argument = theta[:, self.log_d_l, None, None] + theta[:, self.beta, None, None] * self.slope
        # The terms that carry D_f (a D_f of 1 has slope 0 but is still rectified).
        carries = np.any(self.slope != 0, axis=1, keepdims=True)
        correction = -np.where(carries, np.logaddexp(0.0, argument), 0.0)
        slope_of = -np.where(carries, special.expit(argument), 0.0)  # d correction / d log D_l
        return correction, slope_of

    def sliced(self, used: np.ndarray) -> "Rectifier":
        return dataclasses.replace(self, slope=self.slope[:, used])


@dataclasses.dataclass(frozen=True)
class Problem:
    """Objective data in fitted coordinates, batched over replicates.

    `design` covers the free parameters; fixed ones enter through `offset`.
    """

    names: tuple[str, ...]
    design: np.ndarray  # [terms, points, free params]
    offset: np.ndarray  # [replicates or 1, terms, points]
    target: np.ndarray  # [replicates, points]
    weight: np.ndarray  # [replicates, points]
    rectifier: Rectifier | None = None  # the rectified law's D_l, when it is free


class Objective:
    """Summed robust loss of a `Problem` in whitened coordinates, with its exact gradient."""

    def __init__(self, problem: Problem, options: FitOptions, starts_per_replicate: int):
        # Points with zero weight in every replicate (held out) cost time and change nothing.
        used = np.any(problem.weight > 0, axis=0)
        problem = dataclasses.replace(
            problem,
            design=problem.design[:, used],
            offset=problem.offset[..., used],
            target=problem.target[:, used],
            weight=problem.weight[:, used],
            rectifier=problem.rectifier and problem.rectifier.sliced(used),
        )
        terms, points, params = problem.design.shape
        self.flat = problem.design.reshape(terms * points, params)
        self.whiten = _whitening(self.flat)  # z = theta @ whiten.T
        self.unwhiten = np.linalg.inv(self.whiten)  # theta = z @ unwhiten.T
        self.flat_z = np.linalg.solve(self.whiten.T, self.flat.T).T
        self.problem, self.options = problem, options
        self.shape = (terms, points)
        self.starts_per_replicate = starts_per_replicate
        self.log_target = np.log(problem.target)

    def residual(self, z, replicate):
        offset = self.problem.offset
        # A shared offset (no per-replicate fixed values) broadcasts instead of being gathered.
        offset = offset[replicate] if len(offset) > 1 else offset
        u = (z @ self.flat_z.T).reshape((len(z),) + self.shape) + offset
        if self.problem.rectifier is not None:
            correction, _ = self.problem.rectifier(z @ self.unwhiten.T)
            u = u + correction
        if self.options.residual == "raw":
            du = np.exp(u)  # d L_hat / d u_k
            return du.sum(axis=1) - self.problem.target[replicate], du
        top = np.max(u, axis=1, keepdims=True)
        du = np.exp(u - top)
        total = du.sum(axis=1)
        log_pred = np.log(total) + top[:, 0]
        return log_pred - self.log_target[replicate], du / total[:, None]  # softmax

    def _rectifier_grad(self, z, coeff):
        """d objective / d z through the rectifier: coeff [rows, terms, points] is d obj / d u."""
        rectifier = self.problem.rectifier
        _, slope_of = rectifier(z @ self.unwhiten.T)
        grad_theta = np.zeros_like(z)
        # d u / d log D_l = slope_of, d u / d beta = slope_of * slope (on top of the design's).
        grad_theta[:, rectifier.log_d_l] = np.sum(coeff * slope_of, axis=(1, 2))
        grad_theta[:, rectifier.beta] = np.sum(coeff * slope_of * rectifier.slope, axis=(1, 2))
        return grad_theta @ self.unwhiten

    def __call__(self, z: np.ndarray, rows: np.ndarray):
        replicate = rows // self.starts_per_replicate
        with np.errstate(over="ignore", invalid="ignore"):
            res, dres_du = self.residual(z, replicate)
            weight, delta = self.problem.weight[replicate], self.options.delta
            if self.options.loss == "huber":
                absres = np.abs(res)
                rho = np.where(absres <= delta, 0.5 * res * res, delta * (absres - 0.5 * delta))
                psi = np.clip(res, -delta, delta)
            else:
                rho, psi = 0.5 * res * res, res
            value = np.sum(weight * rho, axis=1)
            coeff = (weight * psi)[:, None, :] * dres_du  # [rows, terms, points]
            grad = coeff.reshape(len(z), -1) @ self.flat_z
            if self.problem.rectifier is not None:
                grad = grad + self._rectifier_grad(z, coeff)
        value = np.where(np.isfinite(value), value, np.inf)
        return value, grad

    def floor(self) -> np.ndarray:
        """[replicates] loss that rounding of the targets alone produces (quadratic regime)."""
        target = self.problem.target
        scale = target if self.options.residual == "raw" else 1.0 + np.abs(np.log(target))
        return 0.5 * np.sum(self.problem.weight * (16 * _EPS * scale) ** 2, axis=1)


def _whitening(flat: np.ndarray) -> np.ndarray:
    """[P, P] upper-triangular map z = theta @ W.T giving orthonormal-ish design columns.

    The QR factor scaled so each whitened column has unit RMS over the stacked design; a column
    the design never touches (log D_l, which enters only through the rectifier) stays unscaled.
    """
    touched = np.any(flat != 0, axis=0)
    whiten = np.eye(flat.shape[1])
    _, r = np.linalg.qr(flat[:, touched])
    whiten[np.ix_(touched, touched)] = r / np.sqrt(len(flat))
    return whiten


def _rectifier(names, design, fixed: dict, free: list[int]):
    """(Rectifier or None, constant offset [1 or replicates, terms, points] or None).

    D_l and beta are both free (a Rectifier on the free coordinates) or both fixed (a constant
    correction, e.g. stage 2 of the two-stage procedure); one without the other is refused.
    """
    names = list(names)
    if laws.PRE_LEARNED not in names:
        return None, None
    if "beta" not in names:
        raise ValueError(f"{laws.PRE_LEARNED} needs a parameter beta beside it; got {names}")
    slope = design[..., names.index("beta")]  # [terms, points]: -log D_f where D_f enters
    fixed_pair = [n in fixed for n in (laws.PRE_LEARNED, "beta")]
    if all(fixed_pair):
        log_d_l = np.log(np.ravel(fixed[laws.PRE_LEARNED]).astype(np.float64))
        beta = np.ravel(fixed["beta"]).astype(np.float64)
        theta = np.zeros((max(len(log_d_l), len(beta)), len(names)))
        theta[:, names.index(laws.PRE_LEARNED)], theta[:, names.index("beta")] = log_d_l, beta
        rectifier = Rectifier(names.index(laws.PRE_LEARNED), names.index("beta"), slope)
        return None, rectifier(theta)[0]
    if any(fixed_pair):
        raise ValueError(f"fix both {laws.PRE_LEARNED} and beta or neither; fixed: {sorted(fixed)}")
    free_names = [names[i] for i in free]
    index = free_names.index(laws.PRE_LEARNED), free_names.index("beta")
    return Rectifier(*index, slope), None


def make_problem(names, design, target, weight=None, fixed=None) -> Problem:
    """Builds a batched `Problem`, moving the `fixed` parameters into offsets.

    Args:
      names: [P] parameter names of `design`'s last axis (fitted coordinates).
      design: [terms, points, P].
      target: [points] or [replicates, points] observed losses (positive).
      weight: like `target`; default ones. Zero weight drops a point.
      fixed: name -> value or [replicates] values, in natural units (e.g. E, not log E).
    """
    target = np.atleast_2d(np.asarray(target, np.float64))
    weight = np.ones_like(target) if weight is None else np.atleast_2d(weight).astype(np.float64)
    weight = np.broadcast_to(weight, target.shape)
    fixed = dict(fixed or {})
    free = [i for i, n in enumerate(names) if n not in fixed]
    offset = np.zeros((1,) + design.shape[:2])
    for name, value in fixed.items():
        coord = np.array([laws.to_coord(name, v) for v in np.ravel(value)])  # [1 or replicates]
        column = design[..., list(names).index(name)]  # [terms, points]
        offset = offset + coord[:, None, None] * column[None]
    rectifier, correction = _rectifier(names, design, fixed, free)
    if correction is not None:
        offset = offset + correction
    return Problem(
        names=tuple(names[i] for i in free),
        design=design[..., free],
        offset=offset,
        target=target,
        weight=np.ascontiguousarray(weight),
        rectifier=rectifier,
    )


def grid(names, n_starts: int) -> np.ndarray:
    """A Cartesian grid of about `n_starts` (never more) initialisations, [starts, P].

    Axes get equal counts, then one more point each in turn while the product stays within
    `n_starts` (500 over 4 parameters is 5 x 5 x 5 x 4).
    """
    counts = [max(2, int(np.floor(n_starts ** (1.0 / len(names)) + 1e-9)))] * len(names)
    for axis in itertools.cycle(range(len(names))):
        trial = counts.copy()
        trial[axis] += 1
        if np.prod(trial) > n_starts:
            break
        counts = trial
    axes = [
        np.linspace(*GRID_RANGES[laws.base_name(n)], c) for n, c in zip(names, counts, strict=True)
    ]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(names))


@dataclasses.dataclass(frozen=True)
class Solution:
    """Every row of a batched solve, reshaped to [replicates, starts, ...]."""

    theta: np.ndarray  # [replicates, starts, P] fitted coordinates
    loss: np.ndarray  # [replicates, starts]
    status: np.ndarray  # [replicates, starts] int codes
    iterations: np.ndarray  # [replicates, starts]

    def best(self) -> np.ndarray:
        """[replicates] index of the best start.

        The lowest-loss converged start, unless a start that did not converge reached a loss
        lower by more than 1e-9 (relative): then that one, whose status says it did not converge.
        """
        loss = np.where(np.isfinite(self.loss), self.loss, np.inf)
        overall = np.argmin(loss, axis=1)
        converged = np.isin(self.status, lbfgs.CONVERGED_STATUSES)
        among = np.argmin(np.where(converged, loss, np.inf), axis=1)
        rows = np.arange(len(loss))
        lowest, best_converged = loss[rows, overall], loss[rows, among]
        close = best_converged <= lowest + 1e-9 * np.abs(lowest) + 1e-300
        return np.where(close, among, overall)


def solve(problem: Problem, starts: np.ndarray, options: FitOptions) -> Solution:
    """Runs L-BFGS from `starts` ([S, P] shared, or [replicates, S, P]) on every replicate."""
    replicates = problem.target.shape[0]
    starts = np.broadcast_to(starts, (replicates,) + starts.shape[-2:])
    per_replicate = starts.shape[1]
    objective = Objective(problem, options, per_replicate)
    z0 = starts.reshape(-1, starts.shape[-1]) @ objective.whiten.T
    floor = np.repeat(objective.floor(), per_replicate)
    groups = np.repeat(np.arange(replicates), per_replicate)
    result = lbfgs.minimize(objective, z0, options.optimizer, value_floor=floor, groups=groups)
    theta = np.linalg.solve(objective.whiten, result.theta.T).T
    shape = (replicates, per_replicate)
    return Solution(
        theta=theta.reshape(shape + (-1,)),
        loss=result.value.reshape(shape),
        status=result.status.reshape(shape),
        iterations=result.iterations.reshape(shape),
    )


def check_identifiable(problem: Problem) -> None:
    """Raises ScalingInputError when the points cannot determine the free parameters."""
    points = int(np.count_nonzero(problem.weight[0] > 0))
    free = len(problem.names)
    if points < free:
        raise ScalingInputError(
            f"{points} points cannot determine {free} parameters {problem.names}"
        )
    linear = [i for i, n in enumerate(problem.names) if laws.base_name(n) != laws.PRE_LEARNED]
    flat = problem.design[:, problem.weight[0] > 0][..., linear].reshape(-1, len(linear))
    if np.linalg.matrix_rank(flat) < len(linear):
        raise ScalingInputError(
            f"parameters {problem.names} are not identifiable from these points "
            "(a factor or D_f takes a single value)"
        )


def _edge_params(names, init, final, loss, converged) -> tuple[str, ...]:
    """Grid axes on whose edge lie *all* starts that reached the best optimum.

    Many starts usually reach the best optimum (same final parameters to 1e-6); if every one
    of them began on the same boundary of some grid axis, the grid may not cover the basin and
    should be widened.
    """
    ok = converged & np.isfinite(loss)
    if not np.any(ok):
        return ()
    best = final[np.argmin(np.where(ok, loss, np.inf))]
    basin = ok & np.all(np.abs(final - best) <= 1e-6 * (1.0 + np.abs(best)), axis=1)
    flagged = []
    for column, name in enumerate(names):
        low, high = init[:, column].min(), init[:, column].max()
        at_low = np.all(init[basin, column] == low)
        at_high = np.all(init[basin, column] == high)
        if low < high and (at_low or at_high):
            flagged.append(name)
    return tuple(flagged)


def fit_problem(all_names, problem: Problem, fixed, options: FitOptions) -> Fit:
    """Grid-started fit of a single-replicate `Problem`; keeps every start."""
    return fit_problems(all_names, problem, fixed, options)[0]


def fit_problems(all_names, problem: Problem, fixed, options: FitOptions) -> list[Fit]:
    """Grid-started fits of every replicate of `problem` in one batched solve.

    Replicates share the design (the same points) and differ in targets and weights, e.g. many
    simulated data sets; solving them together pays the L-BFGS tail of slow starts once.
    """
    check_identifiable(problem)
    init = grid(problem.names, options.n_starts)
    solution = solve(problem, init, options)
    return [
        _replicate_fit(all_names, problem, fixed, init, solution, r)
        for r in range(problem.target.shape[0])
    ]


def _replicate_fit(all_names, problem, fixed, init, solution: Solution, replicate: int) -> Fit:
    best = int(solution.best()[replicate])
    final, loss = solution.theta[replicate], solution.loss[replicate]
    status = solution.status[replicate]
    converged = np.isin(status, lbfgs.CONVERGED_STATUSES)
    values = laws.from_theta(problem.names, final[best])
    params = {n: float(v) for n, v in zip(problem.names, values, strict=True)}
    params.update({n: float(v) for n, v in dict(fixed or {}).items()})
    return Fit(
        params={n: params[n] for n in all_names},
        free=problem.names,
        loss=float(loss[best]),
        status=lbfgs.STATUS_NAMES[status[best]],
        converged=bool(converged[best]),
        n_points=int(np.count_nonzero(problem.weight[replicate] > 0)),
        n_converged_starts=int(np.count_nonzero(converged)),
        edge_params=_edge_params(problem.names, init, final, loss, converged),
        starts=Starts(
            init=init,
            final=final,
            loss=loss,
            status=tuple(lbfgs.STATUS_NAMES[s] for s in status),
            iterations=solution.iterations[replicate],
        ),
    )


def natural(names, theta: np.ndarray) -> np.ndarray:
    """Fitted coordinates [..., P] -> natural parameter values (exp of log coefficients)."""
    return laws.from_theta(names, theta)


def check_positive_finite(**arrays) -> None:
    """Raises ScalingInputError naming the first array with a NaN or a non-positive value."""
    for name, values in arrays.items():
        values = np.asarray(values, np.float64)
        if not np.all(np.isfinite(values)):
            raise ScalingInputError(f"{name} contains NaN or infinite values")
        if not np.all(values > 0):
            raise ScalingInputError(f"{name} must be positive; minimum is {values.min()}")


def fit_law(law, x, d_f, loss, weight=None, fixed=None, options=FitOptions()) -> Fit:
    """Fits one law to points (x, d_f) -> loss with the paper's multi-start robust procedure.

    Args:
      law: a `laws.Law` or its name.
      x: [points] factor values (ignored by the single-factor law, but must be positive).
      d_f: [points] finetuning examples.
      loss: [points] observed loss (e.g. per-token NLL); must be positive.
      weight: [points] optional weights (0 drops a point).
      fixed: natural values of parameters to hold fixed (e.g. {"beta": 0.15, "E": 0.75}).
      options: loss, delta, residual and optimiser settings.

    Returns:
      The best fit, with every start's result.
    """
    law = laws.get_law(law) if isinstance(law, str) else law
    check_positive_finite(x=x, d_f=d_f, loss=loss)
    design = law.terms(np.log(np.asarray(x, np.float64)), np.log(np.asarray(d_f, np.float64)))
    problem = make_problem(law.param_names, design, loss, weight, fixed)
    return fit_problem(law.param_names, problem, fixed, options)


def fit_law_batch(law, x, d_f, losses, weight=None, fixed=None, options=FitOptions()) -> list[Fit]:
    """`fit_law` for many data sets on the same points ([data sets, points] `losses`)."""
    law = laws.get_law(law) if isinstance(law, str) else law
    check_positive_finite(x=x, d_f=d_f, loss=losses)
    design = law.terms(np.log(np.asarray(x, np.float64)), np.log(np.asarray(d_f, np.float64)))
    problem = make_problem(law.param_names, design, losses, weight, fixed)
    return fit_problems(law.param_names, problem, fixed, options)
