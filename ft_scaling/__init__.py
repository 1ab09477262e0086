"""ft-scaling: scaling laws of LLM finetuning in JAX."""
