"""Method names -> classes, and the gin file that selects each.

A run selects its method with one gin file, `gin/methods/<module>.gin`, named for the module
that implements the method (`full.gin` selects 'fmt', methods/full.py), which binds the macro
`METHOD` (e.g. `METHOD = @lora.LoRA()`) and the method's recipe (`LEARNING_RATE`, `BATCH_SIZE`,
`LORA_RANK`, ...). The names here are the ones everything else uses: a study's `method` column,
a classification method's `tuning`, PAPER.md's tables ('fmt', 'prompt', 'lora'). Adding a
method: a module in methods/, a gin file, a test and one line in `METHODS`; no trainer edit.
"""

import os

from ft_scaling.methods import base, bitfit, freeze, full, lora, prompt

METHODS: dict[str, type[base.Method]] = {
    cls.name: cls
    for cls in (
        full.FullModelTuning,
        prompt.PromptTuning,
        lora.LoRA,
        bitfit.BitFit,
        freeze.LayerFreeze,
    )
}
GIN_DIR = os.path.join("gin", "methods")


def get(name: str) -> type[base.Method]:
    """The method class registered under `name`; KeyError lists the known names."""
    if name not in METHODS:
        raise KeyError(f"unknown finetuning method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def gin_file(name: str) -> str:
    """The gin file selecting method `name`, relative to the repository root."""
    module = get(name).__module__.rsplit(".", 1)[-1]
    return os.path.join(GIN_DIR, f"{module}.gin")
