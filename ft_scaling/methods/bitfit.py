"""BitFit (Ben Zaken et al. 2022): train only biases and normalisation scales.

The paper's decoder has no biases (PaLM/Gemma style: bias-free projections, RMSNorm without
offset), so there BitFit trains exactly the RMSNorm scales: two per block plus the final norm,
(2 * num_layers + 1) * embed_dim parameters. Models with biases (ModelConfig.qkv_bias,
attention_out_bias, mlp_bias, LayerNorm: Qwen2, GPT-NeoX/Pythia) train those biases too, and
q/k norm scales (Qwen3, OLMo-2) are norm scales like the others. It is the selective-updating
baseline practitioners compare against PET; it adds no parameters.
"""

import dataclasses

import gin
from ft_scaling.methods import base

BIAS_LIKE = ("bias", "scale")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BitFit(base.Method):
    """Leaves named 'bias' or 'scale' train; everything else is frozen."""

    name = "bitfit"

    def is_trainable(self, path: base.Path) -> bool:
        return base.leaf_name(path) in BIAS_LIKE
