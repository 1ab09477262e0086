"""Out-of-domain evaluation sets that TFDS does not ship, read from local copies.

    set                 file (environment variable)                         rows
    CoLA out-of-domain  out_of_domain_dev.tsv ($FT_SCALING_COLA_OOD_TSV)    516 sentences
    HANS                heuristics_evaluation_set.txt ($FT_SCALING_HANS_PATH)  30,000 pairs

TFDS `glue/cola` is GLUE's copy of CoLA, whose dev split is the in-domain dev set only; the
out-of-domain dev set (sentences from sources held out of training, Warstadt et al. 2019) is in
the original CoLA release. TFDS has no HANS (McCoy et al. 2019). Both are small files; the help
text says where to get them. HANS labels are binary (entailment / non-entailment): an MNLI
model's neutral and contradiction predictions both count as non-entailment (tasks.EvalSet).
"""

import csv
import os

COLA_OOD_ENV = "FT_SCALING_COLA_OOD_TSV"
HANS_ENV = "FT_SCALING_HANS_PATH"
COLA_OOD_HELP = (
    "Download cola_public_1.1.zip from https://nyu-mll.github.io/CoLA/, unzip it and set "
    f"{COLA_OOD_ENV} to cola_public/raw/out_of_domain_dev.tsv (columns: source, label, "
    "original mark, sentence; no header)."
)
HANS_HELP = (
    "Download heuristics_evaluation_set.txt from https://github.com/tommccoy1/hans and set "
    f"{HANS_ENV} to it (tab-separated with a header; gold_label, sentence1, sentence2, ...)."
)
HANS_LABELS = {"entailment": 0, "non-entailment": 1}


def _path(env: str, help_text: str) -> str:
    path = os.environ.get(env)
    if not path:
        raise FileNotFoundError(f"${env} is not set. {help_text}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"${env}={path} does not exist. {help_text}")
    return path


def cola_out_of_domain() -> list[dict]:
    """Rows {"sentence", "label"} of CoLA's out-of-domain dev set (1 = acceptable)."""
    path = _path(COLA_OOD_ENV, COLA_OOD_HELP)
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for line_number, fields in enumerate(csv.reader(f, delimiter="\t", quoting=3), 1):
            if len(fields) != 4 or fields[1] not in ("0", "1"):
                raise ValueError(
                    f"{path}:{line_number}: expected 4 tab-separated columns with label 0/1, "
                    f"got {fields!r}. {COLA_OOD_HELP}"
                )
            rows.append({"sentence": fields[3], "label": int(fields[1])})
    return rows


def hans() -> list[dict]:
    """Rows {"premise", "hypothesis", "label"} of HANS (0 = entailment, 1 = non-entailment)."""
    path = _path(HANS_ENV, HANS_HELP)
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for line_number, record in enumerate(csv.DictReader(f, delimiter="\t", quoting=3), 2):
            label = record.get("gold_label")
            if label not in HANS_LABELS or "sentence1" not in record:
                raise ValueError(
                    f"{path}:{line_number}: gold_label {label!r} not in {sorted(HANS_LABELS)} "
                    f"or no sentence1 column. {HANS_HELP}"
                )
            rows.append(
                {
                    "premise": record["sentence1"],
                    "hypothesis": record["sentence2"],
                    "label": HANS_LABELS[label],
                }
            )
    return rows
