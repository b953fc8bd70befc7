"""``zoo bench`` with no task: one table across the tasks' summaries; the README's section is its output."""

import json
from pathlib import Path

import pytest

import zoo.cli
from zoo import bench, plugin

ROOT = Path(__file__).resolve().parent.parent


def _fake_summaries(monkeypatch, calls):
    """Every task's summary replaced by a cheap one built with the real row builder (the real summaries run
    their demo models: minutes; `zoo bench --size tiny` runs them)."""
    from benchmarks import summary_row

    def make(task):
        def summary(size):
            calls.append((task, size))
            weights = task != "segmentation"
            return summary_row(f"{task}-demo", task, "metric", 12.5 if weights else None, "demo data", 0.25, 0.5,
                               "sample", {"reference": 4.0, "fast": 2.0, "lossy": 1.0}, "reference",
                               ["reference", "fast"])
        return summary

    monkeypatch.setattr(plugin.Task, "bench_summary", lambda self: make(self.name))


def test_cross_task_table_text_json_markdown(monkeypatch, capsys, tmp_path):
    calls = []
    _fake_summaries(monkeypatch, calls)
    monkeypatch.setattr(bench, "_spawn", bench._one)  # in this process
    assert zoo.cli.main(["bench", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert {t for t, _ in calls} == set(plugin.tasks()) and {s for _, s in calls} == {"tiny"}
    lines = out.splitlines()
    assert lines[0].startswith("CPU: ") and "torch ISA" in lines[0]
    assert all(c in lines[2] for c in bench.COLUMNS)
    seg = next(line for line in lines if line.startswith("segmentation-demo"))
    assert "n/a (no demo weights)" in seg
    det = next(line for line in lines if line.startswith("detection-demo"))
    # the fastest *exact* path: "lossy" is faster but not exact
    assert "metric 12.5" in det and " fast " in det and "2.00x (reference)" in det and "lossy" not in det

    assert zoo.cli.main(["bench", "--json", "--size", "tiny", "--tasks", "detection"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in report["rows"]] == ["detection"] and report["rows"][0]["fastest"] == "fast"
    assert report["rows"][0]["peak_mb"] > 0 and "flags" in report["cpu"]

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bench.START}\nold\n{bench.END}\ntail\n")
    assert zoo.cli.main(["bench", "--markdown", "--write", str(readme), "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    written = readme.read_text()
    assert "old" not in written and written.endswith(f"{bench.END}\ntail\n") and printed.strip() in written
    assert "| " + " | ".join(bench.COLUMNS) + " |" in written

    assert zoo.cli.main(["bench", "--write", str(readme)]) == 2  # --write without --markdown: one-line error
    assert zoo.cli.main(["bench", "--markdown", "--write", str(tmp_path / "none.md")]) == 2
    (tmp_path / "plain.md").write_text("# no markers\n")
    assert zoo.cli.main(["bench", "--markdown", "--write", str(tmp_path / "plain.md")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "no generated benchmark section" in err and len(err.splitlines()) == 3
    assert zoo.cli.main(["bench", "--tasks", "nosuch"]) == 2


def test_readme_section_is_the_generators_output():
    """The README's benchmark table is `zoo bench --markdown` output: its markers, the CPU line, the columns."""
    text = (ROOT / "README.md").read_text()
    assert bench.START in text and bench.END in text, "the README lost its generated benchmark section"
    section = text.split(bench.START, 1)[1].split(bench.END, 1)[0].strip()
    assert section, "empty section: run `zoo bench --markdown --write README.md`"
    lines = section.splitlines()
    assert lines[0].startswith("CPU: ")
    assert "| " + " | ".join(bench.COLUMNS) + " |" in lines, "columns changed: run `zoo bench --markdown --write README.md`"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert {line.split(" | ")[1] for line in rows} == {t for t, task in plugin.tasks().items()
                                                       if task.bench_summary() is not None}


def test_summary_rows_choose_only_exact_paths():
    from benchmarks import summary_row

    row = summary_row("m", "t", "acc", 1.0, "d", None, None, "x", {"reference": 3.0, "a": 2.0, "b": 1.0}, "reference",
                      ["reference", "a"])
    assert row["fastest"] == "a" and row["speedup"] == pytest.approx(1.5)
    row = summary_row("m", "t", "acc", 1.0, "d", None, None, "x", {"reference": 3.0, "b": 1.0}, "reference", [])
    assert row["fastest"] == "reference" and row["speedup"] == 1.0
    assert "no faster exact path" in bench.cells({**row, "peak_mb": 1.0})["fastest exact path"]
