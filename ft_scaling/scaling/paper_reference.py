"""The paper's numbers the fitter is checked against (PAPER.md; Zhang et al., ICLR 2024).

  * model sizes: exact parameter counts from the Table 3 shapes (App), computed here;
  * the T1b grids: pretraining checkpoints, PET sizes, D_f per task and method;
  * Table 4's fitted laws and Table 5's (H, gamma) for the critical data size.

Parameter counts are **[not stated]** in the paper; we count, per layer, multi-query attention
(Q and O: d x heads*head_dim; one shared K and V head: d x head_dim each), a SwiGLU FFN (three
d x ffn matrices) and two RMSNorm scales (d), plus a final norm and one embedding matrix tied
with the output layer. **Assumption:** vocabulary 256,000 (Garcia et al. 2023 do not fix it in
PAPER.md). The 1B count is then 1.48e9, of which 0.96e9 are non-embedding; LoRA r=4 on all
attention and FFN matrices is then 0.188% of it (paper: 0.19%), a 100-token prompt 0.014%
(paper: 0.017%, which would need a 1.2e9 count; the paper's exact counts are unknown).
"""

import numpy as np

VOCAB_SIZE = 256_000  # assumption, see module docstring
HEAD_DIM = 256
# size: (layers, heads, ffn dim, model dim)   PAPER.md §1, App Table 3
SHAPES = {
    "1B": (16, 8, 8192, 2048),
    "2B": (20, 10, 10240, 2560),
    "4B": (24, 12, 12288, 3072),
    "8B": (32, 16, 16384, 4096),
    "16B": (40, 20, 20480, 5120),
}


def parameter_count(layers: int, heads: int, ffn: int, model: int) -> int:
    """Decoder parameters with multi-query attention, SwiGLU and a tied 256k embedding."""
    attention = 2 * model * heads * HEAD_DIM + 2 * model * HEAD_DIM  # Q, O + one K, one V
    feed_forward = 3 * model * ffn  # SwiGLU: gate, up, down
    norms = 2 * model
    return layers * (attention + feed_forward + norms) + model + VOCAB_SIZE * model


MODEL_PARAMS = np.array([parameter_count(*SHAPES[s]) for s in SHAPES], np.float64)
# PAPER.md §1, T1b (bold = held out: 209B En-De, 167B En-Zh).
PRETRAIN_TOKENS = {
    "en_de": np.array([84, 126, 167, 209, 283]) * 1e9,
    "en_zh": np.array([84, 105, 126, 147, 167, 206]) * 1e9,
}
# PAPER.md §3, T1b: prompt lengths and LoRA ranks (largest held out) at 1B (model dim 2048).
PROMPT_LENGTHS = np.array([50, 100, 150, 200, 300, 400, 600])
LORA_RANKS = np.array([4, 8, 16, 32, 48, 64, 128])


def lora_params_per_rank(layers: int, heads: int, ffn: int, model: int) -> int:
    """LoRA on all attention (Q, K, V, O) and FFN matrices: sum of (in + out) per matrix."""
    attention = 2 * (model + heads * HEAD_DIM) + 2 * (model + HEAD_DIM)
    return layers * (attention + 3 * (model + ffn))


TRAINABLE_PARAMS = {
    "prompt": PROMPT_LENGTHS * SHAPES["1B"][3] * 1.0,
    "lora": LORA_RANKS * lora_params_per_rank(*SHAPES["1B"]) * 1.0,
}
# PAPER.md §2, T1b: D_f grids (largest held out).
_PET_GRID = np.array([8, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]) * 1e3
FINETUNE_EXAMPLES = {
    ("en_de", "fmt"): np.array([0.1, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5]) * 1e6,
    ("en_zh", "fmt"): np.array([1, 2, 3, 4, 5, 10, 15, 20, 25]) * 1e6,
    ("mlsum", "fmt"): np.arange(1, 10) * 1e5,
    **{(t, m): _PET_GRID for t in ("en_de", "en_zh", "mlsum") for m in ("prompt", "lora")},
}
# PAPER.md §6, App Table 4: (A_m, alpha_m, A_p, alpha_p, A_t, alpha_t, E, beta); None: no PET.
_T4_COLUMNS = ("A_m", "alpha_m", "A_p", "alpha_p", "A_t", "alpha_t", "E", "beta")
_T4_ROWS = {
    ("en_de", "fmt"): (1.2e5, 0.52, 6.3e2, 0.21, None, None, 0.75, 0.15),
    ("en_de", "prompt"): (3.9e3, 0.4, 2.7e2, 0.21, 1, 0.0027, 0.62, 0.051),
    ("en_de", "lora"): (2.1e3, 0.36, 1.4e2, 0.18, 1.4, -0.0017, 0.62, 0.081),
    ("en_zh", "fmt"): (3.3e3, 0.34, 2.4e2, 0.17, None, None, 1, 0.14),
    ("en_zh", "prompt"): (8.5e2, 0.33, 2e2, 0.2, 1, 0.0019, 0.77, 0.015),
    ("en_zh", "lora"): (6.6e2, 0.31, 1.3e2, 0.18, 1.2, 0.0044, 0.73, 0.025),
    ("mlsum", "fmt"): (3.3e2, 0.24, 42, 0.11, None, None, 0.98, 0.087),
    ("mlsum", "prompt"): (23, 0.1, 16, 0.069, 2.6, 0.0026, 0.00051, 0.025),
    ("mlsum", "lora"): (26, 0.11, 17, 0.073, 2.4, 0.00022, 0.2, 0.03),
}
TABLE4 = {key: dict(zip(_T4_COLUMNS, row, strict=True)) for key, row in _T4_ROWS.items()}
# PAPER.md §6, App Table 5, model-size scaling: (method 1, method 2) -> (H, gamma).
TABLE5_MODEL = {
    "en_de": {("fmt", "prompt"): (3.7e14, -1.2), ("fmt", "lora"): (2e24, -2.4),
              ("prompt", "lora"): (1.6e-9, 1.5)},
    "en_zh": {("fmt", "prompt"): (6.1e4, -0.12), ("fmt", "lora"): (1.6e6, -0.3),
              ("prompt", "lora"): (1.8e-11, 1.9)},
    "mlsum": {("fmt", "prompt"): (3.6e18, -2.1), ("fmt", "lora"): (1.2e17, -1.8),
              ("prompt", "lora"): (0.00045, 2.3)},
}  # fmt: skip
TABLE5_PRETRAIN = {
    "en_de": {("fmt", "prompt"): (3.7e3, -0.0015), ("fmt", "lora"): (6.9e8, -0.5),
              ("prompt", "lora"): (7.7e-10, 1.2)},
    "en_zh": {("fmt", "prompt"): (5, 0.26), ("fmt", "lora"): (2.7e2, 0.093),
              ("prompt", "lora"): (8.6e-19, 2.1)},
    "mlsum": {("fmt", "prompt"): (3.7e6, -0.63), ("fmt", "lora"): (1e7, -0.63),
              ("prompt", "lora"): (1.6e2, -0.63)},
}  # fmt: skip


def factor_law(task: str, method: str, factor: str) -> dict[str, float] | None:
    """Table 4's multiplicative-law parameters (A, alpha, beta, E) of one factor, or None."""
    row = TABLE4[(task, method)]
    suffix = {"model_params": "m", "pretrain_tokens": "p", "trainable_params": "t"}[factor]
    if row[f"A_{suffix}"] is None:
        return None
    return {"A": row[f"A_{suffix}"], "alpha": row[f"alpha_{suffix}"], "beta": row["beta"],
            "E": row["E"]}  # fmt: skip


def _default_trainable(method: str, size: str) -> float:
    """Trainable parameters of the paper's default method setting at one model size."""
    shape = SHAPES[size]
    if method == "prompt":
        return 100.0 * shape[3]  # |P| = 100 (PAPER.md §3)
    if method == "lora":
        return 4.0 * lora_params_per_rank(*shape)  # r = 4
    return float(parameter_count(*shape))


def synthetic_rows(task: str, method: str, noise: float, seeds: int, rng) -> list[dict]:
    """A results table (DESIGN.md §3 columns) drawn from Table 4's laws on the paper's grids.

    Each run's loss is the factor's law times exp(noise * N(0, 1)). The base run (1B, final
    checkpoint, default PET size) belongs to all three sweeps; it is drawn from the model-size
    law, as Table 4's three laws do not agree exactly there.
    """
    final = PRETRAIN_TOKENS[task if task in PRETRAIN_TOKENS else "en_de"][-1]
    configs = [(size, final, _default_trainable(method, size), "model_params") for size in SHAPES]
    tokens = PRETRAIN_TOKENS[task if task in PRETRAIN_TOKENS else "en_de"]
    configs += [("1B", t, _default_trainable(method, "1B"), "pretrain_tokens") for t in tokens[:-1]]
    if method in TRAINABLE_PARAMS:
        default = _default_trainable(method, "1B")
        configs += [
            ("1B", final, p, "trainable_params") for p in TRAINABLE_PARAMS[method] if p != default
        ]
    rows = []
    for size, pretrain, trainable, factor in configs:
        params = factor_law(task, method, factor)
        model = float(parameter_count(*SHAPES[size]))
        x = {"model_params": model, "pretrain_tokens": pretrain, "trainable_params": trainable}
        for d_f in FINETUNE_EXAMPLES[(task, method)]:
            for seed in range(seeds):
                mean = params["A"] * x[factor] ** -params["alpha"] * d_f ** -params["beta"]
                loss = (mean + params["E"]) * np.exp(noise * rng.standard_normal())
                rows.append({
                    "task": task, "method": method, "model_params": int(model),
                    "pretrain_tokens": int(pretrain), "trainable_params": int(trainable),
                    "finetune_examples": int(d_f), "steps": 1000, "seed": seed,
                    "test_loss": repr(float(loss)), "test_ppl": repr(float(np.exp(loss))),
                    "bleu": "", "chrf": "", "rouge_l": "",
                    "run_dir": f"runs/{task}/{method}/{len(rows)}", "wall_time": 1.0,
                    "config_hash": f"{len(rows):08x}",
                })  # fmt: skip
    return rows
