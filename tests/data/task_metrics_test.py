"""BLEU and ROUGE-L through seqio's evaluation path equal sacrebleu / rouge-score on the strings."""

import numpy as np
import pytest
import sacrebleu
import seqio
from rouge_score import rouge_scorer

import ft_scaling.data.tasks  # noqa: F401 - registers the tasks
from ft_scaling.data import debian_l10n, task_metrics

LENGTHS = {"inputs": 256, "targets": 128}
NUM_EXAMPLES = 60


def _evaluate(task_name):
    """Runs seqio.Evaluator with a fake model that answers example i with its own reference
    when i is even and with the next example's reference when i is odd."""
    evaluator = seqio.Evaluator(
        mixture_or_task_name=task_name,
        feature_converter=seqio.PrefixLMFeatureConverter(pack=False),
        eval_split="validation",
        sequence_length=LENGTHS,
        num_examples=NUM_EXAMPLES,
        async_compute_metrics=False,
    )

    def predict_fn(dataset, model_feature_shapes=None):
        del model_feature_shapes
        rows = list(dataset.as_numpy_iterator())
        answers = {}
        for index, features in rows:
            weights = features["decoder_loss_weights"] == 1
            tokens = features["decoder_target_tokens"][weights]
            # Like a decoder's output: fixed width, padded with 0 after EOS.
            answers[int(index)] = np.pad(tokens, (0, LENGTHS["targets"] - len(tokens)))
        return [(i, answers[i if i % 2 == 0 else (i + 1) % len(rows)]) for i in answers]

    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
    return metrics.result()[task_name]


def _references_and_predictions(config, field):
    references = [ex[field] for ex in debian_l10n.load_split(config, "validation")[:NUM_EXAMPLES]]
    predictions = [
        references[i if i % 2 == 0 else (i + 1) % NUM_EXAMPLES] for i in range(NUM_EXAMPLES)
    ]
    return references, predictions


@pytest.mark.parametrize(
    "task_name, config, tokenize",
    [
        ("debian_l10n_translate_en_de", "translate_en_de", "13a"),
        ("debian_l10n_translate_en_zh", "translate_en_zh", "zh"),
    ],
)
def test_bleu_through_seqio_equals_sacrebleu(task_name, config, tokenize):
    references, predictions = _references_and_predictions(config, "target")
    expected = sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score
    got = _evaluate(task_name)["bleu"]
    assert 20 < expected < 90  # half right: a score that discriminates
    assert got == pytest.approx(expected, abs=1e-9)


def test_rouge_l_through_seqio_equals_rouge_score():
    references, predictions = _references_and_predictions("summarize_de", "summary")
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=task_metrics.UnicodeTokenizer())
    expected = 100 * np.mean(
        [
            scorer.score(r, p)["rougeL"].fmeasure
            for r, p in zip(references, predictions, strict=True)
        ]
    )
    got = _evaluate("debian_l10n_summarize_de")["rougeL"]
    assert 50 < expected < 100
    assert got == pytest.approx(expected, abs=1e-9)


def test_unicode_tokenizer_keeps_umlauts_and_splits_chinese():
    tokenizer = task_metrics.UnicodeTokenizer()
    assert tokenizer.tokenize("Größe ändern, 2 Dateien") == ["größe", "ändern", "2", "dateien"]
    assert tokenizer.tokenize("打开文件 file") == ["打", "开", "文", "件", "file"]
