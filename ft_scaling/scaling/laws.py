"""Scaling laws of finetuning (PAPER.md §5) as pure functions, and their designs for fitting.

The laws, with X a factor (model parameters, pretraining tokens or trainable PET parameters) and
D_f the number of finetuning examples:

    multiplicative (the paper's, Eq. 1)   L = A * X^-alpha * D_f^-beta + E
    additive (Chinchilla-style)           L = E + A * X^-alpha + B * D_f^-beta
    rectified (Lin et al. 2024, joint)    L = A / (X^alpha * (D_l + D_f^beta)) + E
    single factor (one curve per X)       L = A * D_f^-beta + E

The rectified law is the rival of Lin, Huang, Ye et al., "Selecting Large Language Model to
Fine-tune via Rectified Scaling Law" (ICML 2024, arXiv:2402.02314; rectified-scaling-law.github.io):
L(D) = (B / (D_l + D^beta) + E)^a, with D_l the "pre-learned data size", a finetuning curve that
starts flat (D^beta << D_l, their "pre-power phase") and turns into a power law. We use it with
their outer exponent a = 1, the form comparable to the other laws here (the raw loss is a sum of
power terms), and for one model (fixed X) exactly L = B / (D_l + D^beta) + E. The joint extension
puts the model factor into the numerator, B = A X^-alpha, so at fixed X it is their form and at
D_l = 0 it is the multiplicative law. D_l >= 0 is fitted as log D_l like the coefficients.

Every law is a sum of exponentials of forms that are *linear* in the fitted coordinates
theta = (log A, alpha, [log B,] beta, log E):

    L = sum_k exp(u_k),   u_k = design[k] @ theta     e.g. u_0 = log A - alpha log X - beta log D_f

so a `Law` is described by its design tensor [terms, points, params]. `fit.py` needs nothing
else: value and gradient of any Huber objective follow from it in closed form. The one
exception is the rectified law's reducible term,

    A X^-alpha / (D_l + D_f^beta) = exp(u_0 - softplus(log D_l - beta log D_f)),
    u_0 = log A - alpha log X - beta log D_f       (the multiplicative design),

whose correction `fit.py` adds wherever a parameter is named `D_l` (`PRE_LEARNED`); its
column in the design is zero. A joint law
(several factors sharing the D_f part, the paper's stage 1) is the same construction with the
factor-specific columns repeated per factor (`joint_design`).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np


def multiplicative(x, d_f, A, alpha, beta, E):  # noqa: N803 (the paper's names)
    """The paper's joint law L = A * X^-alpha * D_f^-beta + E (PAPER.md §5, Eq. 1)."""
    return A * np.power(x, -alpha) * np.power(d_f, -beta) + E


def additive(x, d_f, A, alpha, B, beta, E):  # noqa: N803
    """The additive (Hoffmann et al. 2022) law L = E + A * X^-alpha + B * D_f^-beta."""
    return E + A * np.power(x, -alpha) + B * np.power(d_f, -beta)


def rectified(x, d_f, A, alpha, beta, D_l, E):  # noqa: N803
    """Joint rectified law L = A / (X^alpha (D_l + D_f^beta)) + E (Lin et al. 2024 at fixed X)."""
    return A * np.power(x, -alpha) / (D_l + np.power(d_f, beta)) + E


def single_factor(x, d_f, A, beta, E):  # noqa: N803
    """The single-variable law L = A * D_f^-beta + E; `x` is accepted and ignored."""
    del x
    return A * np.power(d_f, -beta) + E


def _multiplicative_terms(log_x, log_d):
    ones, zeros = np.ones_like(log_d), np.zeros_like(log_d)
    reducible = np.stack([ones, -log_x, -log_d, zeros], axis=-1)
    irreducible = np.stack([zeros, zeros, zeros, ones], axis=-1)
    return np.stack([reducible, irreducible])  # [terms=2, points, params=4]


def _additive_terms(log_x, log_d):
    ones, zeros = np.ones_like(log_d), np.zeros_like(log_d)
    factor_term = np.stack([ones, -log_x, zeros, zeros, zeros], axis=-1)
    data_term = np.stack([zeros, zeros, ones, -log_d, zeros], axis=-1)
    irreducible = np.stack([zeros, zeros, zeros, zeros, ones], axis=-1)
    return np.stack([factor_term, data_term, irreducible])  # [3, points, 5]


def _rectified_terms(log_x, log_d):
    # The multiplicative design plus a zero column for log D_l, which enters only through
    # fit.py's softplus correction of the D_f-dependent term.
    multiplicative_terms = _multiplicative_terms(log_x, log_d)
    zeros = np.zeros(multiplicative_terms.shape[:2] + (1,))
    return np.concatenate([multiplicative_terms[..., :3], zeros, multiplicative_terms[..., 3:]], -1)


def _single_terms(log_x, log_d):
    del log_x
    ones, zeros = np.ones_like(log_d), np.zeros_like(log_d)
    reducible = np.stack([ones, -log_d, zeros], axis=-1)
    irreducible = np.stack([zeros, zeros, ones], axis=-1)
    return np.stack([reducible, irreducible])  # [2, points, 3]


@dataclasses.dataclass(frozen=True)
class Law:
    """A law: its natural function, parameter names and its design for fitting.

    Attributes:
      name: registry key ("multiplicative", "additive", "single").
      param_names: natural parameter names, in the order of the fitted vector theta.
      log_params: parameters fitted as logs (coefficients; they must be positive).
      factor_params: parameters that belong to the factor X; in a joint fit over several
        factors these are repeated per factor while the rest (the D_f part) is shared.
      function: the law as a pure function `f(x, d_f, **params)`.
      terms: `terms(log_x, log_d) -> [terms, points, params]` design tensor.
    """

    name: str
    param_names: tuple[str, ...]
    log_params: frozenset[str]
    factor_params: tuple[str, ...]
    function: Callable[..., np.ndarray]
    terms: Callable[[np.ndarray, np.ndarray], np.ndarray]

    @property
    def shared_params(self) -> tuple[str, ...]:
        return tuple(p for p in self.param_names if p not in self.factor_params)

    def __call__(self, x, d_f, params: Mapping[str, float]) -> np.ndarray:
        return self.function(x, d_f, **{p: params[p] for p in self.param_names})


LAWS = {
    "multiplicative": Law(
        name="multiplicative",
        param_names=("A", "alpha", "beta", "E"),
        log_params=frozenset({"A", "E"}),
        factor_params=("A", "alpha"),
        function=multiplicative,
        terms=_multiplicative_terms,
    ),
    "additive": Law(
        name="additive",
        param_names=("A", "alpha", "B", "beta", "E"),
        log_params=frozenset({"A", "B", "E"}),
        factor_params=("A", "alpha"),
        function=additive,
        terms=_additive_terms,
    ),
    "rectified": Law(
        name="rectified",
        param_names=("A", "alpha", "beta", "D_l", "E"),
        log_params=frozenset({"A", "D_l", "E"}),
        factor_params=("A", "alpha"),
        function=rectified,
        terms=_rectified_terms,
    ),
    "single": Law(
        name="single",
        param_names=("A", "beta", "E"),
        log_params=frozenset({"A", "E"}),
        factor_params=(),
        function=single_factor,
        terms=_single_terms,
    ),
}


def get_law(name: str) -> Law:
    """Looks a law up by name; raises ValueError naming the known laws."""
    if name not in LAWS:
        raise ValueError(f"unknown law {name!r}; known laws: {', '.join(LAWS)}")
    return LAWS[name]


PRE_LEARNED = "D_l"  # the rectified law's pre-learned data size (see the module docstring)
LOG_COORDINATES = ("A", "B", "E", PRE_LEARNED)  # fitted as logs: they must be positive


def base_name(name: str) -> str:
    """'A[model_params]' -> 'A'; plain names are returned unchanged."""
    return name.split("[", 1)[0]


def to_theta(names: Sequence[str], params: Mapping[str, float]) -> np.ndarray:
    """Natural parameter values -> fitted coordinates (logs of the coefficients)."""
    return np.array([to_coord(n, params[n]) for n in names], np.float64)


def to_coord(name: str, value: float) -> float:
    """One natural value -> its fitted coordinate (log for A, B, E and D_l)."""
    if base_name(name) in LOG_COORDINATES:
        if not value > 0:
            raise ValueError(f"coefficient {name} must be positive, got {value}")
        return float(np.log(value))
    return float(value)


def from_theta(names: Sequence[str], theta: np.ndarray) -> np.ndarray:
    """Fitted coordinates [..., P] -> natural values [..., P] (exp of the log coordinates)."""
    is_log = np.array([base_name(n) in LOG_COORDINATES for n in names])
    return np.where(is_log, np.exp(np.where(is_log, theta, 0.0)), theta)


def joint_design(
    law: Law,
    log_x_by_factor: Sequence[np.ndarray],
    log_d_by_factor: Sequence[np.ndarray],
    factors: Sequence[str],
) -> tuple[tuple[str, ...], np.ndarray]:
    """Design of a joint fit: factor-specific parameters per factor, the D_f part shared.

    Args:
      law: the law; its `factor_params` are repeated per factor.
      log_x_by_factor: per factor, the [points] log X of its sweep.
      log_d_by_factor: per factor, the [points] log D_f of its sweep.
      factors: factor names, used to name parameters 'A[model_params]', 'alpha[...]'.

    Returns:
      (names, design [terms, sum of points, joint params]); points are concatenated in the
      order of `factors`.
    """
    names = [f"{p}[{f}]" for f in factors for p in law.factor_params] + list(law.shared_params)
    blocks = []
    for index, (log_x, log_d) in enumerate(zip(log_x_by_factor, log_d_by_factor, strict=True)):
        single = law.terms(np.asarray(log_x, np.float64), np.asarray(log_d, np.float64))
        block = np.zeros(single.shape[:2] + (len(names),))
        for column, param in enumerate(law.param_names):
            target = f"{param}[{factors[index]}]" if param in law.factor_params else param
            block[..., names.index(target)] = single[..., column]
        blocks.append(block)
    return tuple(names), np.concatenate(blocks, axis=1)
