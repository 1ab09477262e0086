"""Model hyperparameters as a frozen, gin-configurable dataclass, and closed-form sizes.

A model gin (t5x_configs/models/*.gin) binds only the fields below; everything derived
(parameter counts, FLOPs) is computed here from the shapes.
"""

import dataclasses

import gin

REMAT_POLICIES = ("full", "dots")
NORM_KINDS = ("rms", "rms_plus_one", "layernorm")
EMBED_SCALES = ("sqrt", "none")
QK_NORMS = ("none", "head", "projection")
NORM_PLACEMENTS = ("pre", "post", "parallel")
MLP_KINDS = ("swiglu", "geglu_tanh", "gelu")
ROPE_SCALINGS = ("llama3",)


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

    Architecture options (the defaults are the paper's models; each names the public families
    that need it, see ft_scaling/models/hf/):
      norm: NORM_KINDS; 'rms' (x / rms(x) * w), 'rms_plus_one' (Gemma: * (1 + w), w stored as
        Gemma stores it, starting at 0), 'layernorm' (GPT-NeoX: mean-centred, with a bias).
      norm_epsilon: added to the variance in every norm (Llama-2/3, Mistral: 1e-5).
      embed_scale: EMBED_SCALES; 'sqrt' multiplies token embeddings by sqrt(embed_dim)
        (PaLM/Gemma), 'none' does not (Llama, Qwen, Mistral, OLMo-2, GPT-NeoX).
      qkv_bias: biases on the query/key/value projections (Qwen2; Llama's attention_bias).
      attention_out_bias: a bias on the attention output projection (Llama's attention_bias,
        GPT-NeoX).
      mlp_bias: biases on every feed-forward projection (Llama's mlp_bias, GPT-NeoX).
      qk_norm: QK_NORMS; 'head' normalises q and k over head_dim, one scale shared by the heads
        (Qwen3); 'projection' over the whole [heads, head_dim] projection (OLMo-2). Before RoPE.
      norm_placement: NORM_PLACEMENTS; 'pre': x += f(norm(x)) per sublayer; 'post' (OLMo-2):
        x += norm(f(x)); 'parallel' (GPT-NeoX): x += attention(norm_1(x)) + mlp(norm_2(x)).
      rotary_fraction: share of each head's dims RoPE rotates, the first ones (GPT-NeoX's
        rotary_pct, 0.25 for Pythia); the rest pass through.
      rope_scaling: () or ('llama3', factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings), Llama 3.1's frequency scaling.
      mlp: MLP_KINDS; 'swiglu', 'geglu_tanh' (Gemma: GELU with the tanh approximation), 'gelu'
        (GPT-NeoX: one input projection, exact GELU; module names wi, wo).
      sliding_window: 0 (none) or W: a query sees only the W newest keys, itself included
        (Mistral's sliding_window).
    `vocab_size` is the embedding's row count, which may exceed the tokenizer's vocabulary
    (GPT-NeoX pads 50277 ids to 50304 rows); a tokenizer larger than it is refused.
    `head_dim` is explicit, so embed_dim need not equal num_heads * head_dim (Gemma, Qwen3).
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
    norm: str = "rms"
    norm_epsilon: float = 1e-6
    embed_scale: str = "sqrt"
    qkv_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"
    norm_placement: str = "pre"
    rotary_fraction: float = 1.0
    rope_scaling: tuple = ()
    mlp: str = "swiglu"
    sliding_window: int = 0

    def __post_init__(self):
        object.__setattr__(self, "rope_scaling", tuple(self.rope_scaling))  # gin passes lists
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
        self._check_architecture()

    def _check_architecture(self):
        choices = {
            "norm": NORM_KINDS,
            "embed_scale": EMBED_SCALES,
            "qk_norm": QK_NORMS,
            "norm_placement": NORM_PLACEMENTS,
            "mlp": MLP_KINDS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; allowed: {allowed}")
        if self.norm_epsilon <= 0:
            raise ValueError(f"ModelConfig.norm_epsilon must be positive, got {self.norm_epsilon}")
        rotary_dims = int(self.head_dim * self.rotary_fraction)
        if not 0.0 < self.rotary_fraction <= 1.0 or rotary_dims % 2 or rotary_dims == 0:
            raise ValueError(
                f"ModelConfig.rotary_fraction={self.rotary_fraction} must be in (0, 1] and rotate "
                f"an even, positive number of the head_dim={self.head_dim} dims"
            )
        scaling = self.rope_scaling
        if scaling and (len(scaling) != 5 or scaling[0] not in ROPE_SCALINGS):
            raise ValueError(
                f"ModelConfig.rope_scaling={scaling!r}; allowed: () or ('llama3', factor, "
                "low_freq_factor, high_freq_factor, original_max_position_embeddings)"
            )
        if self.sliding_window < 0:
            raise ValueError(f"ModelConfig.sliding_window={self.sliding_window} must be >= 0")


def _matmul_weights(config: ModelConfig) -> int:
    """Kernel scalars of one block: attention q, k, v, o and the feed-forward."""
    d, h = config.embed_dim, config.head_dim
    attention = d * h * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = (2 if config.mlp == "gelu" else 3) * d * config.mlp_dim  # gated: gate, up, down
    return attention + mlp


def _norm_size(config: ModelConfig, features: int) -> int:
    return features * (2 if config.norm == "layernorm" else 1)  # LayerNorm adds a bias


def block_param_count(config: ModelConfig) -> int:
    """Parameters of one Transformer block, from the shapes (biases and norms included)."""
    d, h = config.embed_dim, config.head_dim
    q_features, kv_features = config.num_heads * h, config.num_kv_heads * h
    biases = (q_features + 2 * kv_features) * config.qkv_bias + d * config.attention_out_bias
    if config.mlp_bias:
        biases += (1 if config.mlp == "gelu" else 2) * config.mlp_dim + d
    norms = 2 * _norm_size(config, d)
    if config.qk_norm == "head":
        norms += 2 * _norm_size(config, h)
    elif config.qk_norm == "projection":
        norms += _norm_size(config, q_features) + _norm_size(config, kv_features)
    return _matmul_weights(config) + biases + norms


def param_count(config: ModelConfig) -> int:
    """All parameters: embedding, blocks, final norm and (when untied) the output layer."""
    embedding = config.vocab_size * config.embed_dim
    output = 0 if config.tie_embeddings else embedding
    blocks = config.num_layers * block_param_count(config)
    return embedding + blocks + _norm_size(config, config.embed_dim) + output


def non_embedding_param_count(config: ModelConfig) -> int:
    """Parameters excluding the input embedding and output projection (Kaplan et al.'s N)."""
    return config.num_layers * block_param_count(config) + _norm_size(config, config.embed_dim)


def train_flops_per_token(config: ModelConfig, sequence_length: int) -> int:
    """Model FLOPs of one training token (forward + backward = 3x forward).

    Forward per token: 2 FLOPs per weight of every matmul (blocks and the output projection;
    the embedding lookup is free) plus attention scores and mixing, 2 * 2 * T * heads * head_dim
    per layer for a length-T sequence (counted in full, not halved for causality, as PaLM's MFU).
    """
    d = config.embed_dim
    matmul_weights = config.num_layers * _matmul_weights(config)
    matmul_weights += config.vocab_size * d  # output projection, tied or not
    attention = 2 * 2 * sequence_length * config.num_heads * config.head_dim * config.num_layers
    return 3 * (2 * matmul_weights + attention)
