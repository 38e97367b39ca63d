"""experiments.benchmark end to end: a quick run writes the JSON and the table; an unknown section fails in one line."""

import json

import pytest
from conftest import failure_line, run_module

from experiments.benchmarks import SECTIONS


def run_benchmark(*args):
    return run_module("experiments.benchmark", "--quick", *args, timeout=900)


def check_quick_run(tmp_path, sections):
    output = tmp_path / "results.json"
    result = run_benchmark(f"--sections={','.join(sections)}", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert {row["section"] for row in rows} == set(sections)
    for row in rows:
        assert row["ours"] > 0, row
        if row["peer"] is not None:
            assert row["ratio"] == pytest.approx(row["ours"] / row["peer"])
        assert f"| {row['section']} | {row['name']} | {row['unit']} |" in result.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_quick_data_section_writes_json_and_table(tmp_path):
    check_quick_run(tmp_path, ["data"])


@pytest.mark.slow
def test_quick_run_of_every_section(tmp_path):
    check_quick_run(tmp_path, list(SECTIONS))


def test_unknown_section_fails_in_one_line_and_writes_nothing(tmp_path):
    output = tmp_path / "results.json"
    result = run_benchmark("--sections=data,bogus", f"--output={output}")
    last = failure_line(result)
    assert last == f"Unknown benchmark sections ['bogus']; choose from {list(SECTIONS)}.", last
    assert not output.exists()
