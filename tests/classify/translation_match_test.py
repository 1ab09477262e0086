"""The derived offline set: balanced, negatives never the true partner, domains kept apart."""

import collections

from ft_scaling.classify import tasks, translation_match


def test_match_examples_are_balanced_and_negatives_are_mismatched():
    pairs = [(f"english {i}", f"deutsch {i}") for i in range(101)]
    pairs.append(("english 5 again", "deutsch 5"))  # a duplicate translation
    rows = translation_match.match_examples(pairs, seed=3)
    labels = [r["label"] for r in rows]
    assert labels[:4] == [1, 0, 1, 0]
    assert collections.Counter(labels)[0] == collections.Counter(labels)[1] == len(rows) // 2
    partner = {}
    for english, german in pairs:
        partner.setdefault(english, set()).add(german)
    for row in rows:
        is_pair = row["german"] in partner[row["english"]]
        assert is_pair == (row["label"] == 1), row
    assert rows == translation_match.match_examples(pairs, seed=3)
    assert rows != translation_match.match_examples(pairs, seed=4)


def test_splits_come_from_their_domains_and_do_not_share_sources():
    train = {e["english"] for e in translation_match.split_examples("train")}
    test = translation_match.split_examples("test")
    ood = translation_match.split_examples("test_ood")
    assert len(test) > 500 and len(ood) > 200
    assert not train & {e["english"] for e in test + ood}
    synopses = {en for en, _ in translation_match.source_pairs("test_ood")}
    assert {e["english"] for e in ood} <= synopses
    assert collections.Counter(e["label"] for e in ood)[1] == len(ood) // 2


def test_seqio_task_serves_the_same_rows():
    task = tasks.get_task("translation_match")
    examples = tasks.load_examples(task, task.in_domain, limit=6)
    rows = translation_match.split_examples("test")[:6]
    assert [(e.texts, e.label) for e in examples] == [
        ((r["english"], r["german"]), r["label"]) for r in rows
    ]
