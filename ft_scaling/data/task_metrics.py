"""Metric functions attached to the seqio tasks: BLEU (sacrebleu) and ROUGE-L (rouge-score).

seqio calls each with the postprocessed reference strings and predictions of a whole eval
split; each returns a dict of floats on a 0-100 scale. BLEU uses the tokenizer WMT uses for the
target language (`13a` for German and other Latin-script languages, `zh` for Chinese).

ROUGE-L uses rouge-score's scorer but with a Unicode tokenizer: rouge-score's default
tokenizer keeps only [a-z0-9], which deletes umlauts and accents and all of Chinese. Ours
lowercases, keeps letter/digit runs of any script, and makes each CJK character a token.
"""

import re

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class UnicodeTokenizer:
    """rouge-score tokenizer for any script: lowercase letter/digit runs, CJK per character."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN_RE.findall(text.lower())


def bleu(targets: list[str], predictions: list[str], tokenize: str = "13a") -> dict[str, float]:
    """Corpus BLEU of predictions against one reference each (sacrebleu defaults otherwise).

    Args:
      targets: reference strings.
      predictions: system outputs, aligned with `targets`.
      tokenize: sacrebleu tokenizer name: "13a" (German) or "zh" (Chinese).

    Returns:
      {"bleu": score in [0, 100]}.
    """
    score = sacrebleu.corpus_bleu(list(predictions), [list(targets)], tokenize=tokenize)
    return {"bleu": score.score}


def rouge_l(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Mean sentence-level ROUGE-L F1 (x100) with the Unicode tokenizer, no stemming.

    Args:
      targets: reference summaries.
      predictions: generated summaries, aligned with `targets`.

    Returns:
      {"rougeL": mean F1 in [0, 100]}.
    """
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer())
    pairs = zip(targets, predictions, strict=True)
    scores = [scorer.score(target, prediction)["rougeL"].fmeasure for target, prediction in pairs]
    return {"rougeL": 100.0 * float(np.mean(scores)) if scores else 0.0}


def bleu_13a(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """BLEU with the `13a` tokenizer (German and other Latin-script targets)."""
    return bleu(targets, predictions, tokenize="13a")


def bleu_zh(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """BLEU with the `zh` tokenizer (Chinese targets)."""
    return bleu(targets, predictions, tokenize="zh")
