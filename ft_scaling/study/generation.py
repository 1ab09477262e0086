"""Generation metrics of a finished finetuning run, as `ft-scaling eval` computes them.

    Study.generation_metrics = @GenerationMetrics()     off (None) by default
    after a finetuning run finishes, still under its gin config:
      eval.main.evaluate(MODEL_DIR, the run's task, lengths, model and method,
                         max_examples=N, decode settings, no perplexity)
        -> best checkpoint by dev loss, KV-cached greedy (or beam) decoding of the first N
           examples of the split, scored by eval/metrics.py
      -> the row's columns: bleu, chrf (translation) or rouge_l (summarization: ROUGE-L F1)

The paper reports BLEURT and ROUGE-L beside perplexity (PAPER.md §4); BLEURT needs a learned
checkpoint, so studies store the surface metrics, and `ft-scaling eval` adds BLEURT later on the
same checkpoints. The eval also writes MODEL_DIR/eval/<split>_step<step>.json, as the CLI does.
"""

import dataclasses

import gin

METRICS = ("bleu", "chrf", "rouge")  # eval/metrics.py names a study may ask for
COLUMNS = {"bleu": "bleu", "chrf": "chrf", "rougeL": "rouge_l"}  # eval's key -> results column


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GenerationMetrics:
    """What a study decodes after each finetuning run.

    Attributes:
      examples: the first N examples of `split` are decoded (the cost: N decodes per run).
      metrics: ('bleu', 'chrf') for translation, ('rouge',) for summarization.
      split: the task split decoded.
      beam_size: 1 = greedy (the paper's choice); more = beam search with length penalty `alpha`.
      max_decode_length: new tokens at most; None = the run's targets feature length.
      batch_size: prompts per decoder call.
    """

    examples: int = 256
    metrics: tuple[str, ...] = ("bleu", "chrf")
    split: str = "test"
    beam_size: int = 1
    alpha: float = 0.6
    max_decode_length: int | None = None
    batch_size: int = 32

    def __post_init__(self):
        if self.examples <= 0:
            raise ValueError(f"GenerationMetrics.examples={self.examples} must be positive")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            raise ValueError(
                f"GenerationMetrics.metrics={self.metrics!r}; choose from {', '.join(METRICS)}"
            )


def _configured_method():
    """The run's METHOD, built from its gin config (None: full-model tuning)."""
    method = gin.query_parameter("%METHOD")
    if isinstance(method, gin.config.ConfigurableReference):
        return method.scoped_configurable_fn()
    return method


def measure(model_dir: str, settings: GenerationMetrics) -> dict[str, float]:
    """Decodes and scores the run in `model_dir`; call it under the gin config it trained with.

    Args:
      model_dir: the finished run's MODEL_DIR (its best checkpoint is decoded).
      settings: how many examples, which metrics, how to decode.

    Returns:
      {'bleu': ..., 'chrf': ...} or {'rouge_l': ...}: the results columns, 0-100.
    """
    from ft_scaling.eval import generate
    from ft_scaling.eval import main as eval_main
    from ft_scaling.models import configs

    decode = generate.DecodeSettings(
        settings.max_decode_length, settings.beam_size, settings.alpha, settings.batch_size
    )
    results = eval_main.evaluate(
        checkpoint_path=model_dir,
        task=gin.query_parameter("%MIXTURE_OR_TASK_NAME"),
        feature_lengths=gin.query_parameter("%TASK_FEATURE_LENGTHS"),
        split=settings.split,
        model_config=configs.ModelConfig(),
        method=_configured_method(),
        batch_size=settings.batch_size,
        decode=decode,
        metric_names=settings.metrics,
        compute_perplexity=False,
        max_examples=settings.examples,
    )
    scores = results["metrics"]
    return {column: float(scores[key]) for key, column in COLUMNS.items() if key in scores}
