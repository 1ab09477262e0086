"""Full-model tuning (FMT): every base parameter trains (Zhang et al. 2024, PAPER.md §3)."""

import dataclasses

import gin
from ft_scaling.methods import base


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FullModelTuning(base.Method):
    """All parameters trainable; adds none. Identical to `base.Method`, under a gin name."""

    name = "fmt"
