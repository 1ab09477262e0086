"""`ft-scaling eval`: perplexity and generation metrics of a checkpoint on a task split.

    ft-scaling eval --gin_file=t5x_configs/runs/eval.gin --gin_file=t5x_configs/models/tiny_1.gin \
        --gin_file=gin/tasks/debian_l10n_translate_en_de.gin --gin_file=gin/methods/lora.gin \
        --gin.CHECKPOINT_PATH="'/tmp/run'"

    restore    best (else latest) checkpoint of the run, checked against model + method gins
    ppl        token-level loss over every example of the split (what the laws are fitted on)
    generate   greedy (or beam) decoding of every example, then BLEU/chrF/ROUGE (+ BLEURT/COMET)
    few-shot   SHOTS > 0: SHOTS train examples before each query (format: few_shot.py)
    zero-shot  FLORES_DIR set: Flores-200 directions into the target language, and their mean
    write      MODEL_DIR/eval/<split>_step<step>[...].json and rows of MODEL_DIR/metrics.jsonl
"""

import dataclasses
import functools
import logging
import math
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np

import gin
from ft_scaling import files
from ft_scaling.config import flags
from ft_scaling.eval import examples as examples_lib
from ft_scaling.eval import few_shot, generate, metrics, perplexity, restore

log = logging.getLogger(__name__)


def infer_language(task: str) -> str:
    """Target language from a task name ending in its code ('wmt19_enzh' -> 'zh'), else 'en'.

    Only BLEU's tokenizer depends on it; TARGET_LANGUAGE in eval.gin overrides the guess.
    """
    code = task[-2:]
    return code if code in few_shot.LANGUAGE_NAMES else "en"


def split_perplexity(restored, task, split, feature_lengths, batch_size) -> dict:
    from ft_scaling.train import input_pipeline  # imports TF/seqio: only when needed

    spec = input_pipeline.InputSpec(task, dict(feature_lengths), batch_size)
    batches = input_pipeline.eval_batches(spec, split, batch_size)
    result = perplexity.evaluate(
        restored.model, restored.variables, batches, batch_size, f"split {split!r} of {task!r}"
    )
    return result.as_dict()


def predict(restored, examples, decode: generate.DecodeSettings, vocabulary) -> list[str]:
    outputs = generate.generate(
        restored.model,
        restored.variables,
        [e.prompt for e in examples],
        decode,
        eos_id=vocabulary.eos_id,
        pad_id=vocabulary.pad_id,
    )
    return [vocabulary.decode(tokens) for tokens in outputs]


def resolve_decode(decode, feature_lengths) -> generate.DecodeSettings:
    """Decode settings with max_decode_length None replaced by the targets feature length."""
    decode = decode or generate.DecodeSettings()
    if decode.max_decode_length is None:
        decode = dataclasses.replace(decode, max_decode_length=int(feature_lengths["targets"]))
    return decode


def task_few_shot(examples, task, feature_lengths, shots, seed, vocabulary):
    """Queries with `shots` demonstrations from the task's train split in front."""
    pool = examples_lib.task_examples(task, "train", feature_lengths, max_examples=1000)
    demos = [(d.source, d.target) for d in few_shot.choose_demonstrations(pool, shots, seed)]
    return [
        examples_lib.Example(
            few_shot.few_shot_prompt(vocabulary.encode, demos, e.source, vocabulary.eos_id),
            e.source,
            e.target,
        )
        for e in examples
    ]


def task_generation(
    restored, task, split, feature_lengths, max_examples, shots, seed, decode, scoring
) -> dict:
    """Generation metrics of the split's examples (k-shot when shots > 0)."""
    vocabulary = examples_lib.vocabulary(task)
    examples = examples_lib.task_examples(task, split, feature_lengths, max_examples)
    if shots:
        examples = task_few_shot(examples, task, feature_lengths, shots, seed, vocabulary)
    predictions = predict(restored, examples, decode, vocabulary)
    targets, sources = [e.target for e in examples], [e.source for e in examples]
    return {**scoring(targets, predictions, sources=sources), "generated_examples": len(examples)}


def zero_shot(restored, flores_dir, target, shots, seed, decode, vocabulary, scoring):
    """Scores per Flores-200 direction into `target`, and their mean (paper §5)."""
    results = {}
    for source in few_shot.ZERO_SHOT_SOURCES[target]:
        pairs = few_shot.flores_pairs(flores_dir, source, target, "devtest")
        demos = few_shot.flores_pairs(flores_dir, source, target, "dev") if shots else []
        examples = few_shot.direction_examples(
            pairs, source, target, vocabulary.encode, vocabulary.eos_id, shots, demos, seed
        )
        predictions = predict(restored, examples, decode, vocabulary)
        targets = [e.target for e in examples]
        results[f"{source}-{target}"] = scoring(targets, predictions, sources=[s for s, _ in pairs])
    keys = next(iter(results.values())).keys()
    results["mean"] = {k: float(np.mean([r[k] for r in results.values()])) for k in keys}
    return results


@gin.configurable
def evaluate(
    checkpoint_path: str = gin.REQUIRED,
    task: str = gin.REQUIRED,
    feature_lengths: dict = gin.REQUIRED,
    split: str = "test",
    model_config=None,
    method=None,
    batch_size: int = 32,
    decode: generate.DecodeSettings | None = None,
    metric_names: Sequence[str] = ("bleu", "chrf", "rouge"),
    target_language: str | None = None,
    compute_perplexity: bool = True,
    compute_generation: bool = True,
    max_examples: int | None = None,
    shots: int = 0,
    seed: int = 0,
    flores_dir: str | None = None,
    prefer_best: bool = True,
    mesh=None,
    rules=None,
    bleurt_checkpoint: str | None = None,
    comet_checkpoint: str | None = None,
) -> dict:
    """Evaluates one checkpoint; writes and returns the results (eval.gin documents the args)."""
    decode = resolve_decode(decode, feature_lengths)
    language = target_language or infer_language(task)
    config = model_config or default_config()
    restored = restore.restore(checkpoint_path, config, method, prefer_best, mesh=mesh, rules=rules)
    scoring = functools.partial(
        metrics.score,
        names=metric_names,
        language=language,
        bleurt_checkpoint=bleurt_checkpoint,
        comet_checkpoint=comet_checkpoint,
    )
    results = {
        "checkpoint": files.absolute(checkpoint_path),
        "task": task,
        "split": split,
        "shots": shots,
        "decode": dataclasses.asdict(decode),
        "metrics": {},
    }
    with jax.set_mesh(restored.mesh), nn.logical_axis_rules(restored.rules):
        if compute_perplexity:
            ppl = split_perplexity(restored, task, split, feature_lengths, batch_size)
            results["metrics"].update(ppl)
        if compute_generation:
            scores = task_generation(
                restored, task, split, feature_lengths, max_examples, shots, seed, decode, scoring
            )
            results["generated_examples"] = scores.pop("generated_examples")
            results["metrics"].update(scores)
        if flores_dir:
            vocabulary = examples_lib.vocabulary(task)
            zero = zero_shot(
                restored, flores_dir, language, shots, seed, decode, vocabulary, scoring
            )
            results["zero_shot"] = zero
            results["metrics"].update({f"zero_shot_{k}": v for k, v in zero["mean"].items()})
    name = f"{split}_step{restored.step}" + (f"_{shots}shot" if shots else "")
    run_dir = restore.run_dir(checkpoint_path)
    results["path"] = metrics.write_results(run_dir, name, restored.step, results)
    return results


def default_config():
    from ft_scaling.models import configs

    return configs.ModelConfig()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags.parse_flags(argv, "perplexity and generation metrics of a checkpoint on a task split")
    results = evaluate()
    summary = {k: v for k, v in results["metrics"].items() if isinstance(v, float | int)}
    for key, value in sorted(summary.items()):
        shown = f"{value:.4f}" if math.isfinite(value) else str(value)
        print(f"{key:>24s}  {shown}")
    print(f"results: {results['path']}")
    return 0
