"""`ft-scaling study plan`: what a study will cost, before anything runs.

    ft-scaling study plan --gin_file=gin/studies/pythia_wmt14_ende.gin [--preset=NAME]
        [--gin.KEY=VALUE ...] [--mfu=0.4] [--tpu=v4-64 --zone=us-central2-b --num_pods=4]
        [--out=plan.json | plan.md]

No training, no data, no network: the study is expanded by sweep.expand (the runs the study
command would run) and every run's cost read from its own gin (study/run_cost.py):

    runs per axis        model size (final checkpoints at the default PET size; the default
                         model's runs there are shared with the other axes and counted here),
                         pretraining data (intermediate checkpoints), PET size (the other PET
                         sizes), pretraining runs
    per model size       runs, training tokens, model FLOPs, chip-hours per chip type
    storage              checkpoints the runs keep and their bytes
    launch               the `ft-scaling launch` command, and the days it takes on those pods

Chip-hours are an ESTIMATE: model FLOPs / (peak bf16 FLOP/s x MFU) / 3600, with the peaks of
CHIPS and an assumed MFU (--mfu). Evaluation (dev every EVAL_EVERY, test, generation metrics)
is not counted. Small-batch PET runs reach a lower MFU than large FMT runs on a big slice.
"""

import argparse
import collections
import dataclasses
import shlex
import sys
from collections.abc import Sequence

from ft_scaling.config import flags

# Peak dense bf16 FLOP/s per chip, with where the figure is published.
CHIPS = {
    "TPU v4": (275e12, "cloud.google.com/tpu/docs/v4"),
    "TPU v5e": (197e12, "cloud.google.com/tpu/docs/v5e"),
    "TPU v5p": (459e12, "cloud.google.com/tpu/docs/v5p"),
    "H100 SXM": (989e12, "NVIDIA H100 Tensor Core GPU datasheet, dense (1979 with sparsity)"),
}
DEFAULT_MFU = 0.4
AXES = ("model_size", "pretraining_data", "pet_size")
AXIS_NAMES = {"model_size": "model size", "pretraining_data": "pretraining data",
              "pet_size": "PET size", "pretraining": "pretraining runs"}  # fmt: skip


@dataclasses.dataclass
class Totals:
    """Summed over a group of runs."""

    runs: int = 0
    tokens: int = 0
    flops: float = 0.0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    upper_bound_runs: int = 0  # runs whose step count is TRAIN_STEPS (epoch unknown offline)

    def add(self, cost) -> None:
        self.runs += 1
        self.tokens += cost.tokens
        self.flops += cost.flops
        self.checkpoints += cost.kept_checkpoints
        self.checkpoint_bytes += cost.kept_checkpoints * cost.checkpoint_bytes
        self.upper_bound_runs += not cost.exact


def chip_hours(flops: float, mfu: float) -> dict[str, float]:
    """Estimated chip-hours of `flops` on each chip of CHIPS at model FLOPs utilisation `mfu`."""
    return {chip: flops / (peak * mfu) / 3600 for chip, (peak, _) in CHIPS.items()}


def axis_of(run, study) -> str:
    """'pretraining', or the study axis a finetuning run is counted under (module docstring)."""
    from ft_scaling.study import suites  # noqa: PLC0415

    if run.kind == "pretrain":
        return "pretraining"
    record = run.record
    method = next(m for m in study.methods if m.name == record["method"])
    if method.size_macro and record["pet_size"] != method.default_size:
        return "pet_size"
    model = next(m for m in study.base_models if m.name == record["model_name"])
    if model.hf_source:
        finals = {c.revision for c in suites.checkpoints(model) if c.final}
        intermediate = record.get("revision") not in finals
    elif model.checkpoint:
        intermediate = False
    else:
        final_tokens = model.pretrain_steps * study.tokens_per_pretrain_step
        intermediate = record["pretrain_tokens"] != final_tokens
    return "pretraining_data" if intermediate else "model_size"


def build(study, runs, costs, shapes, mfu: float) -> dict:
    """The plan as a JSON-serialisable dict (what --out=*.json writes)."""
    from ft_scaling.models import configs  # noqa: PLC0415

    axes = collections.defaultdict(collections.Counter)
    by_model, pretraining = {}, {}
    total, by_kind = Totals(), collections.defaultdict(Totals)
    for run, cost, shape in zip(runs, costs, shapes, strict=True):
        axis = axis_of(run, study)
        axes[axis][run.record.get("method") or "pretrain"] += 1
        group = pretraining if run.kind == "pretrain" else by_model
        name = run.record["model_name"]
        entry = group.setdefault(name, {"params": configs.param_count(shape.model_config),
                                        "totals": Totals()})  # fmt: skip
        entry["totals"].add(cost)
        total.add(cost)
        by_kind[run.kind].add(cost)
    return {
        "study": study.name,
        "runs": {"total": len(runs), "by_axis": {a: dict(c) for a, c in axes.items()}},
        "finetuning_by_model": _rows(by_model, mfu),
        "pretraining_by_model": _rows(pretraining, mfu),
        "total": _row(total, mfu),
        "by_kind": {kind: _row(t, mfu) for kind, t in by_kind.items()},
        "mfu": mfu,
        "chips": {
            chip: {"peak_bf16_flops": peak, "source": source}
            for chip, (peak, source) in CHIPS.items()
        },  # fmt: skip
        "assumptions": assumptions(total, mfu),
    }


def _rows(groups: dict, mfu: float) -> list[dict]:
    rows = [{"model": name, "params": entry["params"], **_row(entry["totals"], mfu)}
            for name, entry in groups.items()]  # fmt: skip
    return sorted(rows, key=lambda row: row["params"])


def _row(totals: Totals, mfu: float) -> dict:
    return {**dataclasses.asdict(totals), "chip_hours": chip_hours(totals.flops, mfu)}


def assumptions(total: Totals, mfu: float) -> list[str]:
    """What the figures assume, in words (printed under the tables, kept in the JSON)."""
    notes = [
        "chip-hours are an estimate: model FLOPs / (peak bf16 FLOP/s x MFU); MFU assumed "
        f"{mfu:.0%} (--mfu); peaks: "
        + "; ".join(
            f"{chip} {peak / 1e12:.0f} TFLOP/s ({src})" for chip, (peak, src) in CHIPS.items()
        ),  # fmt: skip
        "steps: the trainer's StopRule, min(TRAIN_STEPS, MAX_EPOCHS x D_f // BATCH_SIZE), "
        "assuming the task's train split has at least D_f examples",
        "tokens: steps x BATCH_SIZE x the summed TASK_FEATURE_LENGTHS (examples padded or "
        "packed to the feature lengths; prompt positions not counted as tokens)",
        "FLOPs: configs.train_flops_per_token (6 per matmul weight + attention, no remat "
        "recompute); PET: 4 per frozen weight (no weight gradient, the input gradient still "
        "flows), LoRA + 6 per LoRA weight, prompt tuning over the P extra positions",
        "not counted: dev evaluations every EVAL_EVERY, the test split, generation metrics, "
        "compilation and input pipeline time",
        "storage: per run keep_last + the best + keep_steps checkpoints (trainable params in "
        "float32 + optimizer state); finetuning checkpoints hold only the trainable params",
    ]
    if total.upper_bound_runs:
        notes.append(
            f"{total.upper_bound_runs} runs have MAX_EPOCHS but no known epoch size (no D_f, "
            "or packed): counted at TRAIN_STEPS, an upper bound"
        )
    return notes


def slice_chips(accelerator: str) -> tuple[str, int] | None:
    """(chip of CHIPS, chips) of a Cloud TPU accelerator type: v4-N and v5p-N count TensorCores
    (2 per chip), v5litepod-N chips; None for another type."""
    kind, _, size = accelerator.partition("-")
    if not size.isdigit():
        return None
    per_chip = {"v4": ("TPU v4", 2), "v5p": ("TPU v5p", 2), "v5litepod": ("TPU v5e", 1)}
    if kind not in per_chip:
        return None
    chip, cores = per_chip[kind]
    return chip, max(int(size) // cores, 1)


TFDS_DIR = "gs://BUCKET/tensorflow_datasets"  # where `tfds build --data_dir=...` put the data


def launch_argv(
    gin_file: str, study: str, gin_flags: Sequence[str], tpu: str, zone: str, num_pods: int
) -> list[str]:
    """The README's pod command: pods claiming runs from one PostgreSQL store, into a bucket,
    reading the task's TFDS data from the bucket (launch --env)."""
    return [
        "ft-scaling", "launch", f"--gin_file={gin_file}", f"--tpu={tpu}", f"--zone={zone}",
        f"--num_pods={num_pods}", "--detach", f"--out=gs://BUCKET/{study}",
        f"--store=postgresql://USER:PASSWORD@HOST:5432/{study}",
        f"--env=TFDS_DATA_DIR={TFDS_DIR}", *gin_flags,
    ]  # fmt: skip


def _number(value: float) -> str:
    """Counts as 1,234 below a million, then 1.23e12 (hours under 10 with two digits)."""
    if abs(value) >= 1e6:  # 3 significant digits put any such value in e-notation
        mantissa, exponent = f"{value:.3g}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:.2g}"


def _params(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _bytes(value: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _table(headers: Sequence[str], rows: Sequence[Sequence], markdown: bool) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "---|" * len(headers))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    )


def render(plan: dict, markdown: bool = False) -> str:
    """The plan's tables as text (stdout) or markdown (--out=*.md)."""
    heading = (lambda t: f"## {t}") if markdown else (lambda t: f"{t}\n{'-' * len(t)}")
    parts = [f"# Plan of study {plan['study']}" if markdown else f"Plan of study {plan['study']}"]
    parts += [heading("Runs per axis"), _axes_table(plan, markdown)]
    parts += [
        heading(
            "Training tokens, FLOPs and estimated chip-hours (MFU "
            f"{plan['mfu']:.0%}) per model size"
        ),
        _cost_table(plan, markdown),
    ]
    parts += [heading("Checkpoint storage (what the runs keep)"), _storage_table(plan, markdown)]
    launch = plan.get("launch")
    if launch:
        parts += [heading("Launch"), "    " + launch["command"]]  # a code block in markdown too
        parts += [launch[key] for key in ("note", "days") if launch.get(key)]
    bullet = "- " if markdown else "  * "
    parts += [heading("Assumptions"), "\n".join(bullet + note for note in plan["assumptions"])]
    return "\n\n".join(parts) + "\n"


def _axes_table(plan: dict, markdown: bool) -> str:
    by_axis = plan["runs"]["by_axis"]
    methods = sorted({m for counts in by_axis.values() for m in counts if m != "pretrain"})
    rows = []
    for axis in (*AXES, "pretraining"):
        counts = by_axis.get(axis, {})
        if counts:
            cells = (
                [counts.get(m, "-") for m in methods]
                if axis != "pretraining"
                else ["-"] * len(methods)
            )
            rows.append([AXIS_NAMES[axis], *cells, sum(counts.values())])
    rows.append(["total", *[""] * len(methods), plan["runs"]["total"]])
    return _table(["axis", *methods, "runs"], rows, markdown)


def _cost_table(plan: dict, markdown: bool) -> str:
    headers = ["model", "params", "runs", "train tokens", "FLOPs", *(f"{c} h" for c in CHIPS)]
    rows = []
    for kind, key in (("finetune", "finetuning_by_model"), ("pretrain", "pretraining_by_model")):
        for row in plan[key]:
            rows.append(_cost_cells(f"{kind} {row['model']}", row, row["params"]))
    rows.append(_cost_cells("total", plan["total"], ""))
    return _table(headers, rows, markdown)


def _cost_cells(label: str, row: dict, params) -> list:
    hours = [_number(row["chip_hours"][chip]) for chip in CHIPS]
    bound = "*" if row["upper_bound_runs"] else ""
    params = _params(params) if params != "" else ""
    tokens, flops = _number(row["tokens"]) + bound, _number(row["flops"]) + bound
    return [label, params, row["runs"], tokens, flops, *hours]


def _storage_table(plan: dict, markdown: bool) -> str:
    rows = [[kind, t["runs"], t["checkpoints"], _bytes(t["checkpoint_bytes"])]
            for kind, t in sorted(plan["by_kind"].items())]  # fmt: skip
    total = plan["total"]
    rows.append(["total", total["runs"], total["checkpoints"], _bytes(total["checkpoint_bytes"])])
    return _table(["runs", "count", "checkpoints kept", "bytes"], rows, markdown)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(flags, gin bindings, the --gin. flags as given: the launch command repeats them)."""
    gin_flags = [a for a in argv if a.startswith("--gin.")]
    bindings, rest = flags.split_gin_bindings(argv)
    parser = argparse.ArgumentParser(
        prog="ft-scaling study plan", description=__doc__.split("\n")[0]
    )
    flags.add_gin_flags(parser)
    parser.add_argument("--preset", default=None, help="a gin file in gin/studies/presets/")
    parser.add_argument("--out", default=None, help="also write the plan: FILE.json or FILE.md")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU, in (0, 1]")
    parser.add_argument("--tpu", default="v4-64", help="accelerator type of the launch command")
    parser.add_argument("--zone", default="us-central2-b", help="zone of the launch command")
    parser.add_argument("--num_pods", type=int, default=4, help="pods of the launch command")
    args = parser.parse_args(rest)
    if not 0 < args.mfu <= 1:
        raise SystemExit(f"ft-scaling study plan: --mfu={args.mfu} must lie in (0, 1]")
    if args.out and not args.out.endswith((".json", ".md")):
        raise SystemExit(f"ft-scaling study plan: --out={args.out!r} must end in .json or .md")
    if args.num_pods < 1:
        raise SystemExit(f"ft-scaling study plan: --num_pods={args.num_pods} must be >= 1")
    return args, bindings, gin_flags


def _launch(plan: dict, args, gin_flags: Sequence[str]) -> dict:
    """The launch command, and the days the study takes on its pods at the plan's estimate."""
    argv = launch_argv(args.gin_file[0], plan["study"], gin_flags, args.tpu, args.zone,
                       args.num_pods)  # fmt: skip
    launch = {"command": shlex.join(argv)}
    if len(args.gin_file) > 1 or args.preset:
        launch["command"] += "   # launch takes one study gin: put the others in it"
    launch["note"] = (
        "BUCKET, USER, PASSWORD, HOST: yours (README: pods and a shared store); TFDS_DATA_DIR: "
        "where `tfds build` put the task's data (the embedded debian_l10n tasks need none)"
    )
    chips = slice_chips(args.tpu)
    if chips:
        chip, count = chips
        hours = plan["total"]["chip_hours"][chip]
        days = hours / (count * args.num_pods) / 24
        launch["days"] = (
            f"[estimate] {days:,.1f} days on {args.num_pods} x {args.tpu} ({count} {chip} chips "
            f"each) if the pods are kept busy at MFU {plan['mfu']:.0%}"
        )
    return launch


def main(argv: Sequence[str]) -> int:
    from ft_scaling.study import main as study_main  # noqa: PLC0415  (preset lookup)
    from ft_scaling.study import run_cost, sweep  # noqa: PLC0415

    args, bindings, gin_flags = _parse(list(argv))
    flags.parse_gin(study_main._study_gin_files(args), bindings, args.gin_search_paths)
    study = sweep.Study()
    runs = sweep.expand(study, f"gs://BUCKET/{study.name}")
    shapes = run_cost.read_shapes(runs)
    plan = build(study, runs, [run_cost.cost(s) for s in shapes], shapes, args.mfu)
    plan["launch"] = _launch(plan, args, gin_flags)
    print(render(plan))
    if args.out:
        from ft_scaling import files  # noqa: PLC0415

        if args.out.endswith(".json"):
            files.atomic_write_json(args.out, plan)
        else:
            files.atomic_write_text(args.out, render(plan, markdown=True))
        print(f"plan written to {args.out}", file=sys.stderr)
    return 0
