"""The results store on SQLite and on a real PostgreSQL server: rows, identity, claims."""

import socket
import threading
import time

import pytest

from ft_scaling.study import store as store_lib

PLAN = [
    ("pre_a", None),
    ("pre_b", None),
    ("ft_a1", "pre_a"),
    ("ft_b1", "pre_b"),
    ("ft_a2", "pre_a"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "results.sqlite")
    return request.getfixturevalue("postgres_url")


def test_rows_round_trip_and_replace(location):
    store = store_lib.ResultsStore(location)
    store.record("r1", "finetune", "failed", {"method": "lora"}, "ValueError: x")
    store.record("r1", "finetune", "finished", {"method": "lora", "test_loss": 1.5})
    store.record("r0", "pretrain", "finished", {"model_name": "tiny"})
    assert store.status("r1") == "finished" and store.status("nope") is None
    rows = store.rows()
    assert [r["run_id"] for r in rows] == ["r0", "r1"]
    assert rows[1] == {
        "run_id": "r1",
        "kind": "finetune",
        "status": "finished",
        "error": None,
        "method": "lora",
        "test_loss": 1.5,
    }
    assert store.rows(kind="pretrain", status="finished")[0]["model_name"] == "tiny"
    store.close()


def test_a_store_of_another_study_is_refused(location):
    store_lib.ResultsStore(location, {"kind": "study", "name": "micro"}).close()
    store_lib.ResultsStore(location, {"kind": "study", "name": "micro"}).close()  # same: fine
    with pytest.raises(store_lib.StoreError, match="holds another study .*name: 'micro', not 'x'"):
        store_lib.ResultsStore(location, {"kind": "study", "name": "x"})


def test_unreachable_database_fails_fast_naming_the_url_without_its_password():
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ft:topsecret@127.0.0.1:{port}/study"
    start = time.time()
    with pytest.raises(store_lib.StoreError) as raised:
        store_lib.ResultsStore(url)
    message = str(raised.value)
    assert f"postgresql://ft:***@127.0.0.1:{port}/study" in message
    assert "topsecret" not in message and time.time() - start < 15


def test_claims_follow_plan_order_and_dependencies(location):
    store = store_lib.ResultsStore(location)
    store.add_plan(PLAN)
    store.add_plan(PLAN)  # a second worker adds the same plan: nothing changes
    since = time.time() - 1
    assert store.claim("w0", 60, since) == "pre_a"
    assert store.claim("w1", 60, since) == "pre_b"
    assert store.claim("w2", 60, since) is None  # the finetuning runs wait for their base
    store.record("pre_a", "pretrain", "finished", {})
    assert store.claim("w0", 60, since) == "ft_a1"
    assert store.claim("w0", 60, since) == "ft_a2"
    store.record("pre_b", "pretrain", "failed", {}, "boom")  # failed: its runs are claimable
    store.release("pre_b", "w1")  # as the worker's Leases do once the row is recorded
    assert store.claim("w1", 60, since) == "ft_b1"
    assert store.remaining(since) == 3
    for run_id in ("ft_a1", "ft_a2", "ft_b1"):
        store.record(run_id, "finetune", "finished", {})
    assert store.remaining(since) == 0 and store.claim("w0", 60, since) is None
    # A worker started after pre_b failed retries it, once.
    later = time.time() + 1
    assert store.remaining(later) == 1
    assert store.claim("w3", 60, later) == "pre_b"
    store.close()


def test_an_expired_lease_is_reclaimed_and_a_renewed_one_is_not(location):
    store = store_lib.ResultsStore(location)
    store.add_plan(PLAN[:2])
    now = 1000.0
    assert store.claim("dead", 10, 0, now=now) == "pre_a"
    assert store.claim("live", 10, 0, now=now) == "pre_b"
    assert store.renew("pre_b", "live", 10, now=now + 8)
    assert store.claim("other", 10, 0, now=now + 11) == "pre_a"  # dead's lease ran out
    assert not store.renew("pre_a", "dead", 10, now=now + 12)  # it is no longer dead's
    assert store.claim("other", 10, 0, now=now + 12) is None  # live renewed in time
    claims = store.claims()
    assert claims["pre_a"]["worker"] == "other" and claims["pre_a"]["attempts"] == 2
    store.release("pre_b", "live")
    assert store.claim("other", 10, 0, now=now + 12) == "pre_b"
    store.close()


def test_a_pack_claims_among_its_candidates_in_their_order(location):
    """store.claim(among=...) (study/claimed_packs.py): the first runnable candidate in the
    order given (longest first), never a held, finished or waiting one; `runnable` lists
    what such a claim could take now, in the same order."""
    store = store_lib.ResultsStore(location)
    store.add_plan(PLAN)
    now = 1000.0
    assert store.claim("w0", 10, 0, now=now) == "pre_a"
    store.record("pre_a", "pretrain", "finished", {})
    candidates = ["ft_a2", "ft_b1", "ft_a1"]  # ft_b1 waits for pre_b
    assert store.runnable(0, candidates, now=now) == ["ft_a2", "ft_a1"]
    assert store.claim("w1", 10, 0, now=now, among=candidates) == "ft_a2"
    assert store.runnable(0, candidates, now=now) == ["ft_a1"]  # ft_a2 is w1's now
    store.record("ft_a1", "finetune", "finished", {})
    assert store.runnable(0, candidates, now=now) == []
    assert store.claim("w2", 10, 0, now=now, among=candidates) is None
    # w1's lease runs out: its candidate is claimable again; outside `among` nothing is taken.
    assert store.claim("w2", 10, 0, now=now + 11, among=["ft_a2"]) == "ft_a2"
    assert store.claim("w2", 10, 0, now=now + 11, among=["ft_b1"]) is None
    assert store.claim("w2", 10, 0, now=now + 11) == "pre_b"  # plan order without `among`
    assert store.claims()["ft_a2"]["attempts"] == 2
    store.close()


def test_concurrent_claims_take_every_run_exactly_once(location):
    plan = [(f"run{i:02d}", None) for i in range(40)]
    setup = store_lib.ResultsStore(location)
    setup.add_plan(plan)
    taken: dict[str, list[str]] = {}

    def work(name: str):
        store = store_lib.ResultsStore(location)  # its own connections, as a process has
        mine = taken.setdefault(name, [])
        while (run_id := store.claim(name, 60, 0)) is not None:
            mine.append(run_id)
            store.record(run_id, "finetune", "finished", {"by": name})
        store.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    claimed = sorted(r for runs in taken.values() for r in runs)
    assert claimed == [run_id for run_id, _ in plan]
    assert {r["run_id"]: r["by"] for r in setup.rows()} == {
        r: w for w, runs in taken.items() for r in runs
    }
    setup.close()


def test_a_study_on_an_unreachable_store_fails_before_training(tmp_path, capsys):
    from ft_scaling import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ft:topsecret@127.0.0.1:{port}/study"
    argv = ["study", "--gin_file=tests/study/micro_study.gin", f"--out={tmp_path}", "--no_report"]
    assert cli.main([*argv, f"--store={url}"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the results store postgresql://ft:***@127.0.0.1:{port}/study" in err
    assert "topsecret" not in err and not (tmp_path / "runs").exists()  # nothing trained


def test_workers_opening_a_new_store_together_all_succeed(location):
    """Workers of a study start at once: all create the tables of an empty database."""
    errors, barrier = [], threading.Barrier(6)

    def open_store():
        try:
            barrier.wait(timeout=30)
            store_lib.ResultsStore(location, {"kind": "study", "name": "race"}).close()
        except Exception as err:  # noqa: BLE001 - the test reports every worker's failure
            errors.append(repr(err))

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
