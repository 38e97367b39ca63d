"""`make bench`: runs every benchmark section, writes JSON and prints a markdown table.

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
from experiments.flags import flag_group, run_script
from tf_lm.fileio import atomic_write

with flag_group("benchmark"):
    flags.DEFINE_list("sections", list(SECTIONS), f"Benchmark sections to run, from {SECTIONS}.")
    flags.DEFINE_string("output", "bench_results/results.json", "Where to write the JSON results.")
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


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.sections) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"Unknown benchmark sections {unknown}; choose from {list(SECTIONS)}.")
    rows = []
    for section in FLAGS.sections:
        module = importlib.import_module(f"experiments.benchmarks.{section}")
        rows.extend(module.run(quick=FLAGS.quick))
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rows": [row.to_dict() for row in rows],
    }
    atomic_write(FLAGS.output, json.dumps(result, indent=2))
    print(markdown_table(rows))
    print(f"\nWrote {FLAGS.output}")


if __name__ == "__main__":
    run_script(main)
