"""A classification study whose rows live in PostgreSQL (`classify study --store=URL`).

The toy translation_match study of tests/classify/study_test.py; its report is read back from
the database through OUT/store.json, a rerun skips every finished run, and the same database
refuses another study.
"""

import os

import pytest

from ft_scaling.classify import main as classify_main
from ft_scaling.classify import study
from ft_scaling.study import store as store_lib
from tests.classify.study_test import BINDINGS, STUDY_GIN, _study


def test_classify_study_on_a_postgresql_store(postgres_url, tmp_path):
    out = str(tmp_path / "study")
    gin_flags = [f"--gin.{k.strip()}={v.strip()}" for k, v in (b.split("=", 1) for b in BINDINGS)]
    argv = ["study", f"--gin_file={STUDY_GIN}", f"--out={out}", f"--store={postgres_url}"]
    assert classify_main.main([*argv, *gin_flags]) == 0
    assert not os.path.exists(os.path.join(out, "results.sqlite"))
    assert store_lib.files.read_json(os.path.join(out, "store.json"))["url"] == (
        postgres_url.replace(":s3cret-pw@", "@")  # the pointer keeps no password
    )
    assert "| adaptive_pbft_fmt | pbft | fmt | adaptive | " in open(f"{out}/report.md").read()
    rows = store_lib.ResultsStore(postgres_url).rows("classify", "finished")
    assert sorted(r["run_id"] for r in rows) == ["adaptive_pbft_fmt_k2_seed0", "icl_k2_seed0"]
    again = study.run_study(_study(), out, store_url=postgres_url)
    assert (again["skipped"], again["finished"]) == (2, 0)
    with pytest.raises(store_lib.StoreError, match="holds another study"):
        study.run_study(_study(), str(tmp_path / "elsewhere"), store_url=postgres_url)
