"""The `vlmloom` CLI: curate with a YAML config and overrides, report, inspect, and config errors."""
import json
import os

import pytest

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.cli.main import main


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    build_demo_corpus(str(root / "corpus"), DemoCorpusConfig(num_samples=50))
    return root


def test_curate_report_and_inspect(small_corpus, capsys):
    root = small_corpus
    job = root / "job.yaml"
    job.write_text("disable: [language]\nheuristics:\n  min_side: 100\noutput_format:\n  samples_per_shard: 7\n")
    out = root / "out"
    rc = main(["curate", str(root / "corpus" / "tars" / "*.tar"), "--output", str(out), "--config", str(job),
               "--set", "dedup.phash_max_distance=4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "balanced" in printed and "heuristics" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["heuristics"]["min_side"] == 100
    assert report["config"]["dedup"]["phash_max_distance"] == 4
    assert "language" not in [row["stage"] for row in report["funnel"]]
    assert len(os.listdir(out / "shards")) == report["shards"] >= 2
    assert main(["report", str(out)]) == 0
    assert "input" in capsys.readouterr().out
    assert main(["inspect", str(out), "--samples", "2"]) == 0
    inspected = capsys.readouterr().out
    assert inspected.count("signals=") == 2
    assert f"manifest/: {report['accounting']['kept']} rows in 16 parts" in inspected  # one part per bucket


def test_config_errors_are_reported_with_a_fix(small_corpus, capsys):
    root = small_corpus
    rc = main(["curate", str(root / "corpus" / "tars" / "*.tar"), "--output", str(root / "bad"),
               "--set", "dedup.phash_max_distanse=3"])
    assert rc == 2
    assert "did you mean 'phash_max_distance'" in capsys.readouterr().err
    rc = main(["curate", str(root / "nothing-here" / "*.tar"), "--output", str(root / "bad2")])
    assert rc == 2 and "matches no files" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_help_lists_every_command_and_each_entry_point_exists(capsys):
    import ast
    import importlib.util

    from vlmloom.cli.main import COMMANDS

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    commands = [line.split()[0] for line in listed.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert commands == list(COMMANDS) and "trace" in commands
    assert main(["no-such-command"]) == 2 and "trace" in capsys.readouterr().out
    for name, (target, about) in COMMANDS.items():  # found on the source: importing trainer/ costs seconds
        module, function = target.split(":")
        tree = ast.parse(open(importlib.util.find_spec(module).origin, encoding="utf-8").read())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name
        assert about, name
