"""Model hyperparameters as a frozen, gin-configurable dataclass, and closed-form sizes.

A model gin (t5x_configs/models/*.gin) binds only the fields below; everything derived
(parameter counts, FLOPs) is computed here from the shapes.
"""

import dataclasses

import gin

REMAT_POLICIES = ("full", "dots")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of the decoder-only Transformer.

    Attributes:
      vocab_size: number of token ids (must match the task's vocabulary).
      num_layers: Transformer blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads; 1 is multi-query attention (the paper's models).
      head_dim: per-head feature size (256 in the paper, Table 3).
      embed_dim: model (residual) width.
      mlp_dim: hidden width of the SwiGLU feed-forward.
      tie_embeddings: output logits reuse the input embedding matrix.
      dropout_rate: residual-branch dropout during training.
      rope_max_wavelength: RoPE base.
      dtype: compute dtype of activations ('float32' or 'bfloat16'); params stay float32.
      remat: rematerialise each block in the backward pass (saves memory on large sizes).
      remat_policy: what a rematerialised block keeps from its forward pass (REMAT_POLICIES):
        'full' keeps only the block's input (least memory, one extra forward pass);
        'dots' also keeps every weight matmul's output and recomputes only norms, RoPE, SwiGLU's
        gate and the attention (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
    """

    vocab_size: int = 4096
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 32
    embed_dim: int = 64
    mlp_dim: int = 256
    tie_embeddings: bool = True
    dropout_rate: float = 0.0
    rope_max_wavelength: float = 10_000.0
    dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"

    def __post_init__(self):
        positive = ("vocab_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
        for name in positive + ("embed_dim", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"ModelConfig.dtype={self.dtype!r}; allowed: 'float32', 'bfloat16'")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"ModelConfig.remat_policy={self.remat_policy!r}; allowed: {REMAT_POLICIES}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelConfig.dropout_rate={self.dropout_rate} not in [0, 1)")


def block_param_count(config: ModelConfig) -> int:
    """Parameters of one Transformer block, from the shapes."""
    d, h = config.embed_dim, config.head_dim
    attention = d * h * (2 * config.num_heads + 2 * config.num_kv_heads)  # q, o, k, v
    mlp = 3 * d * config.mlp_dim  # SwiGLU: gate, up, down
    norms = 2 * d
    return attention + mlp + norms


def param_count(config: ModelConfig) -> int:
    """All parameters: embedding, blocks, final norm and (when untied) the output layer."""
    embedding = config.vocab_size * config.embed_dim
    output = 0 if config.tie_embeddings else embedding
    return embedding + config.num_layers * block_param_count(config) + config.embed_dim + output


def non_embedding_param_count(config: ModelConfig) -> int:
    """Parameters excluding the input embedding and output projection (Kaplan et al.'s N)."""
    return config.num_layers * block_param_count(config) + config.embed_dim


def train_flops_per_token(config: ModelConfig, sequence_length: int) -> int:
    """Model FLOPs of one training token (forward + backward = 3x forward).

    Forward per token: 2 FLOPs per weight of every matmul (blocks and the output projection;
    the embedding lookup is free) plus attention scores and mixing, 2 * 2 * T * heads * head_dim
    per layer for a length-T sequence (counted in full, not halved for causality, as PaLM's MFU).
    """
    d = config.embed_dim
    matmul_weights = config.num_layers * (block_param_count(config) - 2 * d)
    matmul_weights += config.vocab_size * d  # output projection, tied or not
    attention = 2 * 2 * sequence_length * config.num_heads * config.head_dim * config.num_layers
    return 3 * (2 * matmul_weights + attention)
