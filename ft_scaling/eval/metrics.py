"""Generation metrics (BLEU, chrF, ROUGE; BLEURT and COMET when configured) and result files.

All scores are on a 0-100 scale, computed over a whole split:
    bleu    sacrebleu corpus BLEU; tokenizer by target language ('zh' for Chinese, 'ja-mecab'
            and 'ko-mecab' for Japanese/Korean, '13a' otherwise, as WMT does)
    chrf    sacrebleu corpus chrF (character 6-grams, beta 2)
    rouge   mean sentence-level ROUGE-1/2/L F1 from rouge-score, with the data tasks' Unicode
            tokenizer (rouge-score's default keeps only [a-z0-9], deleting umlauts and Chinese)
    bleurt, comet: learned metrics (learned_metrics.py); they need a checkpoint path

Results of one checkpoint on one split are written twice: as a JSON file
MODEL_DIR/eval/<name>.json (atomically, `files.atomic_write_json`: a reader never sees half a
file) and as a row appended to MODEL_DIR/metrics.jsonl, the run's metrics stream.
"""

import os
from collections.abc import Mapping, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from ft_scaling import files
from ft_scaling.data.task_metrics import UnicodeTokenizer
from ft_scaling.eval import learned_metrics
from ft_scaling.train import metrics_io

BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SURFACE_METRICS = ("bleu", "chrf", "rouge")
ALL_METRICS = SURFACE_METRICS + learned_metrics.NAMES


def bleu_tokenizer(language: str) -> str:
    """sacrebleu tokenizer for a target language code ('de', 'zh', 'zh_CN', ...)."""
    return BLEU_TOKENIZERS.get(language.split("_")[0].split("-")[0].lower(), "13a")


def bleu(targets: Sequence[str], predictions: Sequence[str], language: str) -> dict:
    tokenize = bleu_tokenizer(language)
    score = sacrebleu.corpus_bleu(list(predictions), [list(targets)], tokenize=tokenize)
    return {"bleu": score.score}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """Mean F1 x 100 of ROUGE-1, ROUGE-2 and ROUGE-L (no stemming: it is English-only)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeTokenizer())
    scores = [scorer.score(t, p) for t, p in zip(targets, predictions, strict=True)]
    return {
        name: 100.0 * float(np.mean([s[name].fmeasure for s in scores])) for name in ROUGE_TYPES
    }


def score(
    targets: Sequence[str],
    predictions: Sequence[str],
    names: Sequence[str],
    language: str,
    sources: Sequence[str] | None = None,
    bleurt_checkpoint: str | None = None,
    comet_checkpoint: str | None = None,
) -> dict:
    """The named metrics of predictions against one reference each.

    Args:
      targets: reference strings.
      predictions: system outputs aligned with targets.
      names: any of ALL_METRICS.
      language: target language code (picks the BLEU tokenizer).
      sources: source strings (COMET only).
      bleurt_checkpoint, comet_checkpoint: checkpoints of the learned metrics, when requested.

    Returns:
      {metric: value}, e.g. {'bleu': 27.1, 'chrf': 55.0}.

    Raises:
      ValueError: unknown metric name, empty or misaligned lists.
      learned_metrics.MissingBackendError: a learned metric without its package or checkpoint.
    """
    unknown = sorted(set(names) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(ALL_METRICS)}")
    if not targets or len(targets) != len(predictions):
        raise ValueError(
            f"need as many predictions as targets, at least one: got {len(predictions)} "
            f"predictions for {len(targets)} targets"
        )
    results = {}
    if "bleu" in names:
        results.update(bleu(targets, predictions, language))
    if "chrf" in names:
        results.update(chrf(targets, predictions))
    if "rouge" in names:
        results.update(rouge(targets, predictions))
    if "bleurt" in names:
        results.update(learned_metrics.bleurt(targets, predictions, bleurt_checkpoint))
    if "comet" in names:
        results.update(learned_metrics.comet(sources, targets, predictions, comet_checkpoint))
    return results


def write_results(model_dir: str, name: str, step: int, results: Mapping) -> str:
    """Saves one evaluation: MODEL_DIR/eval/<name>.json and a row of MODEL_DIR/metrics.jsonl.

    Args:
      model_dir: the run directory.
      name: file stem naming what was evaluated, e.g. 'test_step1000'.
      step: the checkpoint's step.
      results: numbers under 'metrics' are appended to metrics.jsonl (split = 'eval/<name>');
        everything is written to the JSON file.

    Returns:
      The JSON file's path.
    """
    path = os.path.join(model_dir, "eval", f"{name}.json")
    files.atomic_write_json(path, {"step": int(step), **results})
    numbers = {k: v for k, v in results.get("metrics", {}).items() if _is_number(v)}
    metrics_io.MetricsWriter(model_dir, tensorboard=False).write(step, f"eval/{name}", numbers)
    return path


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
