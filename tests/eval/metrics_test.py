"""Metrics equal sacrebleu / rouge-score run directly; result files; learned-metric errors."""

import json
import sys
import types

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ft_scaling.data.task_metrics import UnicodeTokenizer
from ft_scaling.eval import learned_metrics, metrics

GERMAN_REFS = [
    "Die Katze sitzt auf der Matte.",
    "Öffnen Sie die Datei im Editor.",
    "Das Paket konnte nicht installiert werden.",
]
GERMAN_PREDS = [
    "Die Katze saß auf der Matte.",
    "Öffne die Datei im Editor.",
    "Paket wurde nicht installiert.",
]
CHINESE_REFS = ["无法打开文件。", "请输入密码", "软件包已安装"]
CHINESE_PREDS = ["不能打开文件。", "请输入口令", "软件包已经安装"]


def test_bleu_and_chrf_equal_sacrebleu():
    got = metrics.score(GERMAN_REFS, GERMAN_PREDS, ["bleu", "chrf"], language="de")
    assert got["bleu"] == sacrebleu.corpus_bleu(GERMAN_PREDS, [GERMAN_REFS], tokenize="13a").score
    assert got["chrf"] == sacrebleu.corpus_chrf(GERMAN_PREDS, [GERMAN_REFS]).score
    assert 0 < got["bleu"] < 100
    zh = metrics.score(CHINESE_REFS, CHINESE_PREDS, ["bleu"], language="zh_CN")
    assert zh["bleu"] == sacrebleu.corpus_bleu(CHINESE_PREDS, [CHINESE_REFS], tokenize="zh").score
    # The 13a tokenizer sees each Chinese sentence as one word: a different, lower number.
    assert zh["bleu"] != metrics.score(CHINESE_REFS, CHINESE_PREDS, ["bleu"], "de")["bleu"]


def test_rouge_equals_rouge_score():
    got = metrics.score(GERMAN_REFS, GERMAN_PREDS, ["rouge"], language="de")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeTokenizer())
    direct = [scorer.score(t, p) for t, p in zip(GERMAN_REFS, GERMAN_PREDS, strict=True)]
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * np.mean([s[name].fmeasure for s in direct])
        np.testing.assert_allclose(got[name], expected, rtol=1e-12)
    assert got["rouge1"] > got["rouge2"] > 0


def test_bad_metric_requests_are_named():
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.score(GERMAN_REFS, GERMAN_PREDS, ["blue"], language="de")
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        metrics.score(GERMAN_REFS, GERMAN_PREDS[:2], ["bleu"], language="de")


def test_learned_metrics_without_backend_say_what_to_install(tmp_path):
    with pytest.raises(learned_metrics.MissingBackendError, match="BLEURT needs a checkpoint"):
        metrics.score(GERMAN_REFS, GERMAN_PREDS, ["bleurt"], language="de")
    checkpoint = tmp_path / "BLEURT-20"
    checkpoint.mkdir()
    if "bleurt" not in sys.modules:
        with pytest.raises(learned_metrics.MissingBackendError, match="pip install"):
            metrics.score(
                GERMAN_REFS, GERMAN_PREDS, ["bleurt"], "de", bleurt_checkpoint=str(checkpoint)
            )
    with pytest.raises(learned_metrics.MissingBackendError, match="unbabel-comet"):
        metrics.score(GERMAN_REFS, GERMAN_PREDS, ["comet"], "de", comet_checkpoint=None)


def test_bleurt_backend_is_called_with_the_checkpoint(tmp_path, monkeypatch):
    calls = {}

    class FakeScorer:
        def __init__(self, checkpoint):
            calls["checkpoint"] = checkpoint

        def score(self, references, candidates, batch_size):
            calls["pairs"] = list(zip(references, candidates, strict=True))
            return [0.5, 0.7, 0.6]

    package, module = types.ModuleType("bleurt"), types.ModuleType("bleurt.score")
    module.BleurtScorer = FakeScorer
    package.score = module
    monkeypatch.setitem(sys.modules, "bleurt", package)
    monkeypatch.setitem(sys.modules, "bleurt.score", module)
    got = metrics.score(
        GERMAN_REFS, GERMAN_PREDS, ["bleurt"], "de", bleurt_checkpoint=str(tmp_path)
    )
    np.testing.assert_allclose(got["bleurt"], 60.0)
    assert calls["checkpoint"] == str(tmp_path)
    assert calls["pairs"][0] == (GERMAN_REFS[0], GERMAN_PREDS[0])


def test_results_written_as_json_and_metrics_row(tmp_path):
    results = {"task": "t", "split": "test", "metrics": {"bleu": 12.5, "loss": 1.25}}
    path = metrics.write_results(str(tmp_path), "test_step7", 7, results)
    assert json.loads(open(path).read()) == {"step": 7, **results}
    metrics.write_results(str(tmp_path), "test_step9", 9, results)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [
        {"step": 7, "split": "eval/test_step7", "bleu": 12.5, "loss": 1.25},
        {"step": 9, "split": "eval/test_step9", "bleu": 12.5, "loss": 1.25},
    ]
    assert not [p for p in (tmp_path / "eval").iterdir() if ".tmp" in p.name]
