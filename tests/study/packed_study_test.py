"""Packed studies (Study.pack_runs = K, issue 17) equal the same study trained run by run.

tests/study/micro_pack.gin holds runs of every packable kind on one tiny base model: LoRA of
ranks 4, 8 and 16 with two peak learning rates and two D_f in one pack group of 6 (4 slots, so
slots are refilled), BitFit, prompt tuning of two lengths (a pack each), FMT; two seeds. The
base is pretrained once per module and every study finetunes from it, so a run has one
config_hash in all of them.

    1 device     the whole study solo and packed (K=4), in this process
    8 devices    LoRA (ranks 4/8/16) and FMT packed on a data-parallel mesh of 8 CPU devices
                 (a subprocess), against the 1-device solo runs
    killed       LoRA and BitFit packed in a subprocess, SIGKILLed twice, then rerun
    lost rows    a finished run whose row was never recorded (killed after its last
                 checkpoint) is recorded on a rerun, as a solo rerun records it (in the
                 killed study's directory, after the killed test: file order)
    best step    every run's best step is the step of its lowest dev loss

Equal means (micro_pack.compare): the same runs; per run its steps and best step exactly;
dev loss, test loss and test PPL, and every train row (loss, grad norm, learning rate) and
dev row (loss, PPL) of its metrics log at rtol 1e-5, at the same steps. Not exact: a pack's
matmuls have another shape than a solo run's (K runs' rows in one GEMM, LoRA padded to the
largest rank), so XLA may sum in another order: measured up to 5e-7 relative.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.study import micro_pack

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RTOL = 1e-5
ALL_RUNS = 14  # lora 4 + lora_lr 2 + bitfit 2 + prompt 4 + fmt 2
PACK = micro_pack.PACK_RUNS
MESH_BINDINGS = [micro_pack.methods_binding([*micro_pack.LORA, "fmt"]), "Study.seeds = (0,)"]
KILLED_METHODS = [*micro_pack.LORA, "bitfit"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return micro_pack.pretrain(str(tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def solo(base, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("solo"))
    counts, err = micro_pack.run(base, out, 1)
    assert counts["failed"] == 0 and counts["finished"] == ALL_RUNS, err[-3000:]
    assert "[pack]" not in err and "pack group" not in err
    return out, micro_pack.rows(out)


@pytest.fixture(scope="module")
def packed(base, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packed"))
    counts, err = micro_pack.run(base, out, PACK)
    assert counts["failed"] == 0 and counts["finished"] == ALL_RUNS, err[-3000:]
    return out, micro_pack.rows(out), err


def _pack_groups(err: str) -> list[set[str]]:
    """The run ids that ended in each pack group, from the study's stderr."""
    groups = []
    for line in err.splitlines():
        if re.search(r"\] pack group \d+/\d+: \d+ runs", line):
            groups.append(set())
        ended = re.search(r"runs ended: finetune (\w+) ", line)
        if ended and groups:
            groups[-1].add(ended.group(1))
    return groups


def _family(row: dict) -> str:
    if row["method"] in micro_pack.LORA:
        return "lora"
    return row["method"] + ("" if row["method"] != "prompt" else str(row["pet_size"]))


def test_packed_study_equals_solo_study_on_one_device(solo, packed):
    (_, solo_rows), (_, packed_rows, err) = solo, packed
    assert len(solo_rows) == ALL_RUNS
    differences = micro_pack.compare(solo_rows, packed_rows, RTOL)
    assert not differences, "\n".join(differences[:30])
    # The runs really trained in packs, one per method family (both LoRA grids in one,
    # prompt lengths apart), K at a time: not one by one.
    assert f"[pack] pack of {PACK} runs" in err, err[-3000:]
    expected = {}
    for run_id, row in packed_rows.items():
        expected.setdefault(_family(row), set()).add(run_id)
    groups = _pack_groups(err)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected.values())), err[-3000:]
    assert max(map(len, groups)) == 6 > PACK  # the LoRA group refills its slots
    ranks = {r["pet_size"] for r in packed_rows.values() if _family(r) == "lora"}
    assert ranks == {4, 8, 16}


def test_best_step_is_the_step_of_the_lowest_dev_loss(solo, packed):
    """The paper's model selection: a run's best step (summary.json) is the step of its lowest
    dev loss, the first one among equals; one BitFit run's is not its last step."""
    wrong, earlier = [], 0
    for rows in (solo[1], packed[1]):
        for row in rows.values():
            dev = micro_pack.run_log(row)["validation"]
            lowest = min(dev, key=lambda r: r["loss"])
            earlier += lowest["step"] < row["steps"]
            if micro_pack.best_step(row) != lowest["step"]:
                losses = [(r["step"], r["loss"]) for r in dev]
                wrong.append(
                    f"{micro_pack.describe(row)}: best step {micro_pack.best_step(row)}, "
                    f"lowest dev loss at step {lowest['step']} (dev losses {losses})"
                )
            assert row["dev_loss"] == lowest["loss"]
    assert earlier >= 2, "no run has its best dev loss before its last step: nothing is tested"
    assert not wrong, "\n".join(wrong)


def test_packed_study_on_an_eight_device_mesh_equals_solo_study(base, solo, tmp_path):
    """LoRA of ranks 4/8/16 and FMT packed on 8 CPU devices (a subprocess: XLA_FLAGS), the
    batch of every slot split over them (data_parallel.gin, the run gins' mesh), equal to
    the same runs trained solo on one device (the `solo` study: same config_hash, since the
    mesh comes from the device count, not the gin)."""
    out = str(tmp_path / "packed")
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    cmd = [sys.executable, "-m", "tests.study.micro_pack", "study", base, out, str(PACK)]
    done = subprocess.run(
        [*cmd, *MESH_BINDINGS], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The LoRA group is 3 runs: a pack has no slot for a run that is not there (PACK is 4).
    assert "[pack] pack of 3 runs (asked 3" in done.stderr, done.stderr[-3000:]
    assert "sharded over 8 device(s)" in done.stderr
    packed_rows = micro_pack.rows(out)
    assert len(packed_rows) == 4  # LoRA ranks 4, 16 (lr 1e-2, D_f 16), 8 (lr 3e-3, D_f 32); FMT
    solo_rows = {k: v for k, v in solo[1].items() if k in packed_rows}
    differences = micro_pack.compare(solo_rows, packed_rows, RTOL)
    assert not differences, "\n".join(differences[:30])


def _study_cmd(base: str, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ft_scaling.cli",
        "study",
        f"--gin_file={micro_pack.GIN}",
        f"--out={out}",
        "--no_report",
        *(f"--gin.{b}" for b in micro_pack.study_bindings(base, PACK)),
        f"--gin.{micro_pack.methods_binding(KILLED_METHODS)}",
    ]


def _kill_when(cmd: list[str], cache: str, trigger, timeout_s: float = 300) -> list[str]:
    """Runs cmd and SIGKILLs it at the first stderr line for which trigger(lines) holds;
    returns its stderr lines so far. Fails if it ended or timed out before that. Compiled
    programs are kept in `cache` (JAX's persistent cache) for the next process."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env.update(
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    lines, fired = [], False
    try:
        for line in proc.stderr:
            lines.append(line)
            if trigger(lines):
                proc.send_signal(signal.SIGKILL)
                fired = True
                break
    finally:
        timer.cancel()
        proc.wait()
        proc.stderr.close()
    assert fired, f"no kill: the study ended first (rc {proc.returncode})\n{''.join(lines)[-3000:]}"
    return lines


def _mid_second_pack(lines: list[str]) -> bool:
    """A line saying the second pack group's runs are at step 5 or later (of 8): each has a
    checkpoint (its first dev evaluation, at step 2, is a new best) and steps to go."""
    started = any("] pack group 2/2:" in line for line in lines)
    return started and re.match(r"step [5-8]/8 ", lines[-1]) is not None


@pytest.fixture(scope="module")
def killed(base, tmp_path_factory):
    """The LoRA and BitFit runs packed, killed at the first run's end (its pack mid-way, its
    next runs queued) and again while the BitFit pack trains (its runs checkpointed, not
    ended), then rerun to completion (in this process): the out dir."""
    out = str(tmp_path_factory.mktemp("killed"))
    # The second process reads the programs the first compiled (the LoRA pack's steps).
    cache = str(tmp_path_factory.mktemp("compiled"))
    cmd = _study_cmd(base, out)
    _kill_when(cmd, cache, lambda lines: "runs ended: finetune" in lines[-1])
    first = micro_pack.rows(out)
    assert 1 <= len(first) < 6, "the first kill was not inside the LoRA pack"
    _kill_when(cmd, cache, _mid_second_pack)
    second = micro_pack.rows(out)
    bitfit = [r for r in _plan(out) if r["record"]["method"] == "bitfit"]
    assert not any(r["run_id"] in second for r in bitfit), "a BitFit run ended before the kill"
    dirs = [os.path.join(out, "runs", f"finetune_{r['run_id']}", "checkpoints") for r in bitfit]
    assert all(os.path.isdir(d) and os.listdir(d) for d in dirs), "killed before BitFit saved"
    counts, err = micro_pack.run(base, out, PACK, [micro_pack.methods_binding(KILLED_METHODS)])
    assert counts["failed"] == 0 and counts["skipped"] == len(second), err[-3000:]
    return out


def _plan(out: str) -> list[dict]:
    with open(os.path.join(out, "plan.json")) as f:
        return [r for r in json.load(f) if r["kind"] == "finetune"]


def test_packed_study_killed_twice_and_rerun_equals_uninterrupted(killed, packed):
    """Row for row (micro_pack.compare) at rtol 1e-5, not exactly: a resumed pack holds
    other runs than the uninterrupted one did (those that had ended are not in it, those
    restored are at other steps), so its steps' matmuls may sum in another order."""
    reference = {k: v for k, v in packed[1].items() if v["method"] in KILLED_METHODS}
    assert len(reference) == 8
    differences = micro_pack.compare(reference, micro_pack.rows(killed), RTOL)
    assert not differences, "\n".join(differences[:30])


def test_a_run_whose_row_was_lost_after_its_last_checkpoint_is_recorded_on_rerun(
    base, killed, packed
):
    """Killed between its last checkpoint and its row (its summary written or not), a run
    restores at its stop step: the rerun trains it no further and records what a solo rerun
    records (its dev evaluation and test with the best checkpoint)."""
    reference = {k: v for k, v in packed[1].items() if v["method"] in KILLED_METHODS}
    lost = sorted(
        {min(k for k, v in reference.items() if v["method"] == m) for m in ("lora", "bitfit")}
    )
    db = sqlite3.connect(os.path.join(killed, "results.sqlite"))
    with db:  # one transaction, committed
        db.executemany("DELETE FROM runs WHERE run_id = ?", [(k,) for k in lost])
    db.close()
    methods = [micro_pack.methods_binding(KILLED_METHODS)]
    counts, err = micro_pack.run(base, killed, PACK, methods)
    assert counts["finished"] == 2 and counts["skipped"] == 6, err[-3000:]
    differences = micro_pack.compare(reference, micro_pack.rows(killed), RTOL)
    assert not differences, "\n".join(differences[:30])
