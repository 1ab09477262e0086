"""The report's intervals hold the truth about as often as they say (issue 16, item 5).

Design of the paper's kind where exponents are barely identified: 5 model sizes spanning 16x,
6 D_f values spanning 1000x, alpha = 0.03, beta = 0.1, E = 0.6 and a reducible term of 1.2 at
the smallest corner (losses 1.15 .. 1.8), 1% noise per run; the 'paper' rule holds out the
largest model and the largest D_f (20 fitting points, 10 held out). Single fits miss alpha,
beta and E by a median 20%, 17% and 24%, while the held-out loss is predicted to about 1%.

Both interval kinds are measured: by run (the report's default) and parametric (see
bootstrap.py); the numbers are in report.MEASURED_COVERAGE.
"""

import dataclasses

import numpy as np
import pytest

from ft_scaling.scaling import coverage, fit, laws, procedure
from ft_scaling.scaling.bootstrap import BootstrapOptions

MODEL_SIZES = tuple(np.geomspace(1e9, 16e9, 5))
EXAMPLES = tuple(np.geomspace(1e3, 1e6, 6))
TRUTH = {
    "A": 1.2 * MODEL_SIZES[0] ** 0.03 * EXAMPLES[0] ** 0.1,
    "alpha": 0.03,
    "beta": 0.1,
    "E": 0.6,
}
DESIGN = coverage.Design(MODEL_SIZES, EXAMPLES, TRUTH)
# The study report's settings (study/report.py) are a grid of 300 starts and 100 replicates from
# 4 warm + 4 grid starts; 36 and 50 from 2 + 2 keep 100 studies under ~30 s on two busy cores
# and give the same coverage to Monte Carlo error (measured, see report.interval_note).
OPTIONS = fit.FitOptions(n_starts=36)
BOOT = BootstrapOptions(replicates=50, level=0.9, warm_starts=2, grid_starts=2)


@pytest.mark.parametrize("method", ["parametric", "run"])
def test_batched_studies_are_the_reports_fits(method):
    sweeps = coverage.simulate(DESIGN, studies=3, seed=1)
    boot = BootstrapOptions(replicates=12, level=0.9, method=method)
    fits = coverage.fit_studies(sweeps, "paper", OPTIONS, boot)
    names = list(fits.names)
    for study in (0, 2):
        setting = procedure.fit_setting(
            {"model_params": sweeps[study]}, procedure="free", options=OPTIONS, bootstrap=boot
        )
        alone = setting.factors["model_params"]
        # Equal up to the optimiser's tolerance: a batch of another shape rounds differently,
        # and where E runs to 0 (log E to -inf) only its absolute value is settled. A replicate
        # stops at ftol 1e-12 on the loss, which along these barely identified directions leaves
        # a parameter settled to ~sqrt(1e-12): 4.9e-6 apart was seen for one of 48 on a CPU
        # whose float rounding differs from the one 1e-6 was set on (2026-12-04).
        assert [alone.params[n] for n in names] == pytest.approx(fits.estimates[study], rel=1e-6)
        assert alone.bootstrap == pytest.approx(fits.samples[study], rel=2e-5, abs=1e-6,
                                                nan_ok=True)  # fmt: skip
        # The report's two stages: stage 2 refits A, alpha on the same points with stage 1's
        # beta and E, reaching the joint fit's optimum; its intervals are the joint fit's.
        two_stage = procedure.fit_setting({"model_params": sweeps[study]}, options=OPTIONS,
                                          bootstrap=boot).factors["model_params"]  # fmt: skip
        for name in ("alpha", "beta", "E"):
            low, high = coverage.interval_bounds(fits.samples[study][None, :, names.index(name)],
                                                 0.9)  # fmt: skip
            assert two_stage.intervals[name] == pytest.approx((low[0], high[0]), rel=1e-4)
        point = two_stage.farthest_held_out
        law = laws.get_law("multiplicative")
        replicas = {n: fits.samples[study][:, i] for i, n in enumerate(names)}
        low, high = coverage.interval_bounds(law(point.x, point.d_f, replicas)[None], 0.9)
        assert point.interval == pytest.approx((low[0], high[0]), rel=1e-4)


def test_farthest_held_out_point_is_the_largest_model_at_the_largest_d_f():
    points, _ = procedure.average_points(coverage.simulate(DESIGN, 1, 0)[0], "paper")
    assert coverage.farthest_held_out(points) == (MODEL_SIZES[-1], EXAMPLES[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["run", "parametric"])
def test_90_percent_intervals_cover_the_truth_in_80_to_97_percent_of_100_studies(method):
    fits = coverage.fit_studies(
        coverage.simulate(DESIGN, studies=100, seed=0),
        "paper",
        OPTIONS,
        dataclasses.replace(BOOT, method=method),
    )
    covered = coverage.coverage(DESIGN, fits, level=0.9)
    print(f"coverage of 90% intervals ({method}):", covered)
    assert list(covered) == list(coverage.QUANTITIES)
    for name, share in covered.items():
        assert 0.80 <= share <= 0.97, (name, covered)
