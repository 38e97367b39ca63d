"""experiments.benchmark end to end: a quick run writes the JSON and the table; an unknown section fails in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks import SECTIONS

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(*args):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "experiments.benchmark", "--quick", *args], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=900)


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
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"Unknown benchmark sections ['bogus']; choose from {list(SECTIONS)}.", last
    assert not output.exists()
