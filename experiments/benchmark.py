"""`make bench`: runs every benchmark section, writes JSON and prints a markdown table after each section.

Each section measures tf_lm beside its peer (HF transformers, a plain loop) in the same process,
so the ratio is measured on the same machine at the same moment, not remembered.

    python -m experiments.benchmark --sections=model,data --output=bench_results/results.json
"""

import importlib
import json
import os
import platform

from absl import app, flags

from experiments.benchmarks import SECTIONS
from experiments.benchmarks.common import SHARED_DATA
from experiments.flags import flag_group, one_line_errors, run_script
from tf_lm.fileio import atomic_write, gfile

OUTPUT, QUICK_OUTPUT = "bench_results/results.json", "bench_results/results_quick.json"

with flag_group("benchmark"):
    flags.DEFINE_list("sections", list(SECTIONS), f"Benchmark sections to run, from {SECTIONS}.")
    flags.DEFINE_string("output", None, f"Where to write the JSON results, rewritten after each section (default: "
                        f"{OUTPUT}; with --quick, {QUICK_OUTPUT}, so a smoke test never replaces a full run's).")
    flags.DEFINE_bool("quick", False, "Shorter timings, for smoke-testing the benchmarks themselves.")
FLAGS = flags.FLAGS


def markdown_table(rows) -> str:
    lines = [
        "| section | benchmark | unit | tf_lm | peer | peer value | ratio | target | notes |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        peer = "" if row.peer is None else f"{row.peer:,.4g}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(
            f"| {row.section} | {row.name} | {row.unit} | {row.ours:,.4g} | {row.peer_name} | {peer} | {ratio} "
            f"| {row.target} | {row.notes} |"
        )
    return "\n".join(lines)


def output_path(output: str | None, quick: bool) -> str:
    return output or (QUICK_OUTPUT if quick else OUTPUT)


def check_writable(path: str) -> None:
    """Fails before the first section, not after the last, if the results cannot be written to `path`."""
    files = gfile(path)
    if files.isdir(path):
        raise IsADirectoryError(f"--output={path} is a directory; pass the path of a JSON file.")
    probe = f"{path}.probe"
    try:
        atomic_write(probe, "")
    except OSError as error:
        raise OSError(f"Cannot write --output={path}: {error}") from None
    files.remove(probe)


def load_sections(names: list[str]) -> dict:
    """The modules of the sections `names`, once each finds the data files it reads (its `DATA_FILES`)."""
    modules = {name: importlib.import_module(f"experiments.benchmarks.{name}") for name in names}
    for name, module in modules.items():
        for path in getattr(module, "DATA_FILES", ()):
            if not path.is_file():
                raise FileNotFoundError(f"The {name} benchmark reads {path}, which is missing; set TF_LM_SHARED_DATA "
                                        f"to the directory of the shared data (now {SHARED_DATA}).")
    return modules


def run_sections(modules: dict, output: str, quick: bool) -> None:
    """Runs each section, then writes every row so far to `output` and prints the section's table: a section
    that fails later loses only its own rows."""
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    rows = []
    for name, module in modules.items():
        section_rows = module.run(quick=quick)
        rows.extend(section_rows)
        atomic_write(output, json.dumps({"machine": machine, "rows": [row.to_dict() for row in rows]}, indent=2))
        print(markdown_table(section_rows))
        print(f"\nWrote {output} (the sections up to {name})\n", flush=True)


def main(argv):
    del argv
    if not FLAGS.sections:
        raise app.UsageError(f"--sections is empty; choose from {list(SECTIONS)}.")
    unknown = sorted(set(FLAGS.sections) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"Unknown benchmark sections {unknown}; choose from {list(SECTIONS)}.")
    output = output_path(FLAGS.output, FLAGS.quick)
    with one_line_errors():
        check_writable(output)
        run_sections(load_sections(FLAGS.sections), output, FLAGS.quick)


if __name__ == "__main__":
    run_script(main)
