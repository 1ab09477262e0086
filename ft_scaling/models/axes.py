"""Logical axis names shared by every parameter and activation.

Model code names axes only through these constants; `train/partitioning.py` maps them onto the
mesh axes ('data', 'fsdp', 'model') with rules set in gin, so no model file mentions a mesh axis.
"""

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
# Key/value heads get their own name: with multi-query attention there is one kv head, which
# cannot be split over the 'model' axis the way query heads are.
KV_HEADS = "kv_heads"
KV = "kv"  # the per-head feature dimension (head_dim)
VOCAB = "vocab"
PROMPT = "prompt"
LORA_RANK = "lora_rank"
CACHE_LENGTH = "cache_length"

ALL = (BATCH, LENGTH, EMBED, MLP, HEADS, KV_HEADS, KV, VOCAB, PROMPT, LORA_RANK, CACHE_LENGTH)
