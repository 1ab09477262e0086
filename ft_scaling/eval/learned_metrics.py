"""Learned metrics as optional backends: BLEURT (the paper's translation metric) and COMET.

Neither package is a dependency (BLEURT pulls TF-Slim code from GitHub, COMET pulls PyTorch), and
both need a downloaded checkpoint. Asking for one without its package or checkpoint raises
MissingBackendError saying exactly what to install or download; it is never skipped silently.

    BLEURT  pip install git+https://github.com/google-research/bleurt.git
            checkpoint: BLEURT-20 (https://storage.googleapis.com/bleurt-oss-21/BLEURT-20.zip),
            unzipped; the paper does not state which one it used (PAPER.md §4)
    COMET   pip install unbabel-comet
            checkpoint: the .ckpt of e.g. Unbabel/wmt22-comet-da, which
            comet.download_model('Unbabel/wmt22-comet-da') fetches and returns the path of

Scores are reported x100 (mean segment score), like the other metrics.
"""

import importlib
import os
from collections.abc import Sequence

import numpy as np

NAMES = ("bleurt", "comet")
BLEURT_HELP = (
    "install it with `pip install git+https://github.com/google-research/bleurt.git` and "
    "download a checkpoint, e.g. BLEURT-20: "
    "https://storage.googleapis.com/bleurt-oss-21/BLEURT-20.zip (unzip it), then pass its "
    "directory as --gin.BLEURT_CHECKPOINT=\"'/path/BLEURT-20'\""
)
COMET_HELP = (
    "install it with `pip install unbabel-comet` and download a checkpoint, e.g. "
    "`python -c \"import comet; print(comet.download_model('Unbabel/wmt22-comet-da'))\"`, "
    "then pass the printed .ckpt path as --gin.COMET_CHECKPOINT=\"'/path/model.ckpt'\""
)


class MissingBackendError(RuntimeError):
    """A learned metric was requested but its package or checkpoint is not available."""


def _require(metric: str, module: str, checkpoint: str | None, help_text: str):
    """Imports the backend module and checks the checkpoint path; raises with install help."""
    if not checkpoint:
        raise MissingBackendError(f"{metric} needs a checkpoint and none was given: {help_text}")
    if not os.path.exists(checkpoint):
        raise MissingBackendError(f"{metric} checkpoint {checkpoint!r} does not exist: {help_text}")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingBackendError(
            f"{metric} needs the Python package providing `{module}` ({err}): {help_text}"
        ) from err


def bleurt(
    targets: Sequence[str], predictions: Sequence[str], checkpoint: str | None, batch_size=64
) -> dict:
    """Mean BLEURT x 100 of predictions against references.

    Raises:
      MissingBackendError: no checkpoint given, it does not exist, or `bleurt` is not installed.
    """
    score_module = _require("BLEURT", "bleurt.score", checkpoint, BLEURT_HELP)
    scorer = score_module.BleurtScorer(checkpoint)
    scores = scorer.score(
        references=list(targets), candidates=list(predictions), batch_size=batch_size
    )
    return {"bleurt": 100.0 * float(np.mean(scores))}


def comet(
    sources: Sequence[str] | None,
    targets: Sequence[str],
    predictions: Sequence[str],
    checkpoint: str | None,
    batch_size: int = 16,
) -> dict:
    """COMET system score x 100 (the mean of segment scores).

    Raises:
      MissingBackendError: no checkpoint given, it does not exist, or `comet` is not installed.
      ValueError: no source sentences (COMET scores source, hypothesis and reference together).
    """
    comet_module = _require("COMET", "comet", checkpoint, COMET_HELP)
    if sources is None or len(sources) != len(targets):
        raise ValueError("COMET needs one source sentence per target")
    model = comet_module.load_from_checkpoint(checkpoint)
    data = [
        {"src": s, "mt": p, "ref": t} for s, p, t in zip(sources, predictions, targets, strict=True)
    ]
    output = model.predict(data, batch_size=batch_size, gpus=0, progress_bar=False)
    return {"comet": 100.0 * float(output.system_score)}
