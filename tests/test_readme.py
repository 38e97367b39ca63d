"""The README as a new user follows it: every code block, in order, as written, in a copy of the repository.

Shell blocks run through `bash -e` with the virtual environment activated (the README's set-up step). Python
blocks run one after another in one session of the venv's python, as a reader pastes them into one interpreter
(a later block may use an earlier one's names). Both run from the copy's root, next to a `shared/` that holds
the data the README reads as `../shared/data`. A block whose first line says it is not run by this test (it needs
the network or hardware this machine lacks) is skipped; every other block must succeed.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

from experiments.benchmarks.common import SHARED_DATA

SKIP_MARK = "not run by tests/test_readme.py"
# The Python session: reads one JSON-encoded block per line, runs it in one namespace with its output on stderr,
# and answers on stdout with null or the traceback.
SESSION = """
import contextlib, json, sys, traceback
namespace = {"__name__": "__main__"}
for line in sys.stdin:
    try:
        with contextlib.redirect_stdout(sys.stderr):
            exec(compile(json.loads(line), "<README block>", "exec"), namespace)
        answer = None
    except BaseException:
        answer = traceback.format_exc()
    print(json.dumps(answer), flush=True)
"""
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks(text: str) -> list[tuple[str, str, int]]:
    """`(language, code, line number)` of every fenced code block, in order."""
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in BLOCK.finditer(text)]


def test_readme_blocks_are_found_and_only_marked_ones_are_skipped():
    blocks = readme_blocks((REPO / "README.md").read_text())
    languages = {language for language, _, _ in blocks}
    assert languages <= {"bash", "python"}, f"a block in another language would not be run: {languages}"
    assert any(language == "bash" and "make demo" in code for language, code, _ in blocks)
    skipped = [code for _, code, _ in blocks if SKIP_MARK in code.splitlines()[0]]
    assert all(re.search(SKIP_MARK + r": \S", code.splitlines()[0]) for code in skipped), "say why it is skipped"


def _copy_checkout(destination: Path) -> None:
    """The repository's files as a clone would have them (tracked and new, not ignored), with their mtimes, so
    `make` sees the shared virtual environment as up to date and never reinstalls it from the copy."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


@pytest.mark.slow
def test_every_readme_block_runs_as_written(tmp_path):
    venv = (REPO / ".venv").resolve()
    stamp = venv / ".installed"
    assert stamp.is_file() and all(stamp.stat().st_mtime >= (REPO / name).stat().st_mtime
                                   for name in ("setup.cfg", "pyproject.toml")), "run `make install` first"
    checkout = tmp_path / "tf_lm"
    _copy_checkout(checkout)
    (checkout / ".venv").symlink_to(venv)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    # `source .venv/bin/activate`, as the set-up says; nothing else from the test's own environment.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(VIRTUAL_ENV=str(checkout / ".venv"), PATH=f"{checkout / '.venv' / 'bin'}:{env['PATH']}")
    python_log = tmp_path / "python_session.log"
    with open(python_log, "w") as log:
        session = subprocess.Popen([str(checkout / ".venv" / "bin" / "python"), "-c", SESSION], cwd=checkout, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        failures = []
        try:
            for language, code, line in readme_blocks((checkout / "README.md").read_text()):
                if SKIP_MARK in code.splitlines()[0]:
                    continue
                started = time.monotonic()
                if language == "bash":
                    result = subprocess.run(["bash", "-e", "-c", code], cwd=checkout, env=env, capture_output=True,
                                            text=True, timeout=1200)
                    failure = result.returncode and (f"exited {result.returncode}\n--- stdout\n"
                                                     f"{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-3000:]}")
                else:
                    session.stdin.write(json.dumps(code) + "\n")
                    session.stdin.flush()
                    failure = json.loads(session.stdout.readline() or '"the python session died"')
                seconds = time.monotonic() - started
                print(f"README.md:{line} ({language}) {'failed' if failure else 'ran'} in {seconds:.0f} s")
                if failure:
                    failures.append(f"README.md:{line} ({language}):\n{code}\n{failure}")
        finally:
            session.kill()
            session.wait()
    # Every block runs even after a failure (a later one may fail on its own account), then all are reported.
    assert not failures, "\n\n".join(failures) + f"\n--- python session\n{python_log.read_text()[-3000:]}"


# A test named in prose, `tests/test_x.py::test_name`, and the ones after it in the same cell or paragraph written
# `..._rest_of_the_name` (same file, the name shortened at its start; a trailing `...` shortens its end too).
TEST_REFERENCE = re.compile(r"`(tests/\w+\.py)::(\w+)[^`]*`|`\.\.\.(\w+?)(\.\.\.)?`")


def test_every_test_the_readme_and_docs_name_exists():
    """The Guarantees table and the benchmark notes cite tests as proof; a renamed or removed test must not leave
    a promise that nothing proves."""
    missing = []
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for passage in re.split(r"\n\s*\n|\n(?=\|)", document.read_text()):  # paragraphs, and table rows
            current = None
            for path, name, shortened, open_end in TEST_REFERENCE.findall(passage):
                if path:
                    current, pattern = path, rf"def {name}\("
                elif current is None:
                    continue  # `...x` that is not a test's name
                else:
                    pattern = rf"def test\w*{shortened}" + (r"\w*\(" if open_end else r"\(")
                if not re.search(pattern, (REPO / current).read_text()):
                    missing.append(f"{document.name}: {current}::{name or '...' + shortened}")
    assert not missing, missing
