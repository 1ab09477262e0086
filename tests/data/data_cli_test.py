"""`ft-scaling data`: user errors exit 1 with a message that names the problem."""

import importlib
import json

import seqio

from ft_scaling.data import data_cli


def test_build_without_catalogs_names_the_locale(tmp_path, capsys):
    # Hermetic: the apt lists are the test's own, so the machine's (absent on a fresh one, where
    # the Translation error would come first) play no part; only the catalogs are missing.
    lists = tmp_path / "lists"
    lists.mkdir()
    for lang in ("en", "de", "fr", "zh_CN"):
        name = f"deb_dists_x_main_i18n_Translation-{lang.replace('_', '%5f')}"
        stanza = f"Package: pkg\nDescription-md5: {0:032x}\nDescription-{lang}: a tool\n .\n"
        (lists / name).write_text(stanza, encoding="utf-8")
    locales = tmp_path / "locale"
    locales.mkdir()
    argv = ["build", "debian_l10n", "--locale_dir", str(locales), "--lists_dir", str(lists)]
    argv += ["--out", str(tmp_path / "o")]
    assert data_cli.main(argv) == 1
    assert "no gettext catalogs for locale 'de'" in capsys.readouterr().err


def test_info_reports_snapshot_counts(capsys):
    assert data_cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["snapshot"] is True
    assert info["counts"]["translate_en_de"]["train"] == 67_261


def test_subset_of_unknown_task_lists_registered_names(capsys):
    assert data_cli.main(["subset", "wmt14_en_de", "--size", "10"]) == 1
    err = capsys.readouterr().err
    assert "unknown task or mixture 'wmt14_en_de'" in err
    # Other test modules may have registered more tasks (classification): check membership.
    registered = err.split("registered: ", 1)[1].strip().split(", ")
    assert {"debian_l10n_pretrain_en_de", "wmt14_ende", "wmt19_enzh"} <= set(registered)


def test_importing_tasks_twice_is_harmless():
    import ft_scaling.data.tasks as tasks

    importlib.reload(tasks)
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    expected = {
        "wmt14_ende",
        "wmt19_enzh",
        "mlsum",
        "debian_l10n_translate_en_de",
        "debian_l10n_translate_en_zh",
        "debian_l10n_summarize_de",
        "debian_l10n_pretrain_en_de",
        "debian_l10n_pretrain_en_zh",
    }
    assert expected <= names
