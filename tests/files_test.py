"""ft_scaling.files: atomic writes, CSV round trip, the operative config and the run fingerprint."""

import csv
import io
import json
import os

import pytest
from etils import epath

import gin
from ft_scaling import files


def _leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp" in name)


def test_atomic_writes_leave_the_content_and_no_temp_file(tmp_path):
    files.atomic_write_text(tmp_path / "a" / "b.txt", "grüße\n")  # parents are created
    files.atomic_write_bytes(tmp_path / "c.bin", b"\x00\xff")
    files.atomic_write_json(tmp_path / "d.json", {"b": 1, "a": "中文"})
    files.atomic_write_jsonl(tmp_path / "e.jsonl", [{"x": 1}, {"x": "ä"}])
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "grüße\n"
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\xff"
    text = (tmp_path / "d.json").read_text(encoding="utf-8")
    assert text == '{\n  "a": "中文",\n  "b": 1\n}'  # sorted keys, UTF-8 kept
    assert files.read_json(tmp_path / "d.json") == {"a": "中文", "b": 1}
    lines = (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"x": 1}, {"x": "ä"}]
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "a") == []


def test_a_rewrite_replaces_the_whole_file(tmp_path):
    target = tmp_path / "t.txt"
    files.atomic_write_text(target, "a long first version\n")
    files.atomic_write_text(target, "short\n")
    assert target.read_text() == "short\n"


@pytest.mark.parametrize("method", ["write_text", "write_bytes"])
def test_a_write_that_raises_half_way_leaves_the_old_file_whole(tmp_path, monkeypatch, method):
    target = tmp_path / "t.out"
    target.write_text("old\n")
    real = getattr(type(epath.Path(tmp_path)), method)

    def half_then_fail(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)  # the temp file holds half
        raise OSError("disk full")

    monkeypatch.setattr(type(epath.Path(tmp_path)), method, half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        if method == "write_text":
            files.atomic_write_text(target, "new content\n")
        else:
            files.atomic_write_bytes(target, b"new content\n")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_a_failed_rename_removes_the_temp_file(tmp_path, monkeypatch):
    def fail(self, target):
        raise OSError("rename refused")

    monkeypatch.setattr(type(epath.Path(tmp_path)), "replace", fail)
    with pytest.raises(OSError, match="rename refused"):
        files.atomic_write_text(tmp_path / "t.txt", "x")
    assert os.listdir(tmp_path) == []


def test_rows_that_fail_to_serialise_write_nothing(tmp_path):
    def rows():
        yield {"ok": 1}
        raise RuntimeError("row 2 broke")

    with pytest.raises(RuntimeError, match="row 2 broke"):
        files.atomic_write_jsonl(tmp_path / "r.jsonl", rows())
    with pytest.raises(TypeError):
        files.atomic_write_json(tmp_path / "r.json", {"not json": object()})
    assert os.listdir(tmp_path) == []


def test_csv_round_trip(tmp_path):
    rows = [
        {"name": "a, b", "value": 1.25, "note": 'say "hi"\nnext line', "extra": "left out"},
        {"name": "中文", "value": None},
    ]
    path = tmp_path / "t.csv"
    files.atomic_write_csv(path, rows, ["name", "value", "note"])
    with open(path, newline="", encoding="utf-8") as handle:
        read = list(csv.DictReader(handle))
    assert read == [
        {"name": "a, b", "value": "1.25", "note": 'say "hi"\nnext line'},
        {"name": "中文", "value": "", "note": ""},  # None and missing keys are empty cells
    ]
    reread = list(csv.DictReader(io.StringIO(files.read_text(path), newline="")))
    assert [r["name"] for r in reread] == ["a, b", "中文"]


def test_read_json_names_a_file_that_is_not_json(tmp_path):
    (tmp_path / "bad.json").write_text("{half")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        files.read_json(tmp_path / "bad.json")


def test_operative_config_is_what_gin_used(tmp_path):
    files.write_operative_config(tmp_path / "run")
    assert (tmp_path / "run" / "config.gin").read_text() == gin.operative_config_str()


def test_fingerprint_is_recorded_then_a_mismatch_names_every_key(tmp_path):
    fingerprint = {"lr": 0.1, "steps": 100, "method": "lora"}
    files.check_fingerprint(tmp_path, fingerprint)
    assert files.read_json(tmp_path / files.FINGERPRINT_FILE) == fingerprint
    files.check_fingerprint(tmp_path, dict(fingerprint))  # the same run resumes
    changed = {"lr": 0.2, "steps": 100, "rank": 4}  # lr differs, method gone, rank new
    with pytest.raises(files.FingerprintError) as error:
        files.check_fingerprint(tmp_path, changed)
    message = str(error.value)
    assert "lr: saved 0.1, now 0.2" in message
    assert "method: saved 'lora', now None" in message
    assert "rank: saved None, now 4" in message
    assert "steps" not in message
    assert files.read_json(tmp_path / files.FINGERPRINT_FILE) == fingerprint  # kept


def test_fingerprint_compares_as_read_back_and_write_false_records_nothing(tmp_path):
    files.check_fingerprint(tmp_path / "a", {"shape": (2, 3)})
    files.check_fingerprint(tmp_path / "a", {"shape": [2, 3]})  # a tuple reads back a list
    files.check_fingerprint(tmp_path / "b", {"x": 1}, write=False)
    assert not (tmp_path / "b" / files.FINGERPRINT_FILE).exists()
