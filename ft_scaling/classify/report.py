"""The classification study's report: method x examples per class -> in-domain / OOD metric.

    | method | kind | tuning | base | 16/class | 32/class | ... |
    | pbft_lora | pbft | lora | pretrained | 0.61 ± 0.02 / 0.55 ± 0.03 | ...

Each cell is the task metric (accuracy, or Matthews correlation for CoLA) on the in-domain set
and on the OOD set, mean ± sample standard deviation (ddof = 1) over the seeds that finished
(the count is shown when some are missing). `results.csv` holds every finished row.
"""

import os

import numpy as np

from ft_scaling import files
from ft_scaling.study import store as store_lib

CSV_COLUMNS = (
    "run_id",
    "task",
    "method",
    "kind",
    "tuning",
    "base",
    "per_class",
    "train_examples",
    "seed",
    "steps",
    "trainable_params",
    "metric",
    "in_domain_metric",
    "ood_metric",
    "in_domain_accuracy",
    "in_domain_matthews",
    "ood_accuracy",
    "ood_matthews",
    "in_domain_examples",
    "ood_examples",
    "first_train_loss",
    "last_train_loss",
    "wall_time",
)


def _cell(values: list[float], expected: int) -> str:
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    text = f"{np.mean(values):.3f} ± {std:.3f}"
    return text if len(values) == expected else f"{text} (n={len(values)})"


def table(rows: list[dict], method_order: list[str], sizes: list[int], seeds: int) -> str:
    """The markdown table of the module docstring."""
    header = ["method", "kind", "tuning", "base", *[f"{k}/class" for k in sizes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in method_order:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        cells = []
        for size in sizes:
            at = [r for r in mine if r["per_class"] == size]
            in_domain = _cell([r["in_domain_metric"] for r in at], seeds)
            ood = _cell([r["ood_metric"] for r in at if r.get("ood_metric") is not None], seeds)
            cells.append(f"{in_domain} / {ood}")
        first = mine[0]
        lines.append(
            "| "
            + " | ".join([method, first["kind"], first["tuning"], first["base"], *cells])
            + " |"
        )
    return "\n".join(lines)


def _stages(store_rows: list[dict]) -> list[str]:
    return [
        f"- stage `{r['stage']}`: {r['steps']} LM steps, dev loss {r['dev_loss']:.3f}, "
        f"{r['wall_time'] or 0:.0f} s ({r['run_dir']})"
        for r in store_rows
    ]


def write(out_dir: str, study=None) -> str:
    """Writes OUT/report.md and OUT/results.csv from the store; returns the markdown."""
    store = store_lib.ResultsStore(store_lib.store_of(out_dir))
    rows = store.rows("classify", "finished")
    failed = store.rows("classify", "failed")
    stages = store.rows("stage", "finished")
    store.close()
    if study is not None:
        order, sizes, seeds = (
            [m.name for m in study.methods],
            list(study.per_class),
            len(study.seeds),
        )
    else:  # `ft-scaling classify report DIR`: the order the rows give
        order = list(dict.fromkeys(r["method"] for r in rows))
        sizes = sorted({r["per_class"] for r in rows})
        seeds = len({r["seed"] for r in rows})
    first = rows[0] if rows else {}
    lines = [
        f"# Few-shot classification: {getattr(study, 'name', first.get('task', '?'))}",
        "",
        f"Task `{first.get('task')}`, metric **{first.get('metric')}**; each cell: in-domain / "
        f"OOD, mean ± std over {seeds} seeds ({first.get('in_domain_examples')} in-domain and "
        f"{first.get('ood_examples')} OOD examples). {len(rows)} runs finished, {len(failed)} "
        f"failed; run time {sum(r['wall_time'] for r in rows):.0f} s.",
        "",
        table(rows, order, sizes, seeds),
        "",
        *_stages(stages),
        *[f"- failed `{r['run_id']}`: {(r['error'] or '').splitlines()[0]}" for r in failed],
    ]
    markdown = "\n".join(lines) + "\n"
    files.atomic_write_text(os.path.join(out_dir, "report.md"), markdown)
    files.atomic_write_csv(os.path.join(out_dir, "results.csv"), rows, CSV_COLUMNS)
    return markdown
