"""Memory targets checked on `rewardbooth bench step` reports (issue 22; benchmarks/gpu-check.sh runs it on
the GPU): FLUX.1 LoRA with the look-forward reward over an nf4 base at most 24 GiB at 512 px and 40 GiB at
1024 px, SD3.5-medium LoRA at 1024 px at most 16 GiB, and every DPG variant's peak memory at most 1.03x the
baseline step's. A peak is CUDA's reserved memory where the report has it (what a card must hold: the
allocator's cache included), else the allocated peak.

    python -m rewardbooth.experiments.memory_targets REPORT.json [--peak-gib 24] [--report-only]

Exits 1 when a target is missed (0 with --report-only, as the CPU dry run uses it: there the peaks are a
process's resident memory, not a GPU's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RATIO_TARGET = 1.03  # DPG's memory against the baseline step's (bench.VARIANTS: dpg-look-forward)


def verdicts(report: dict, peak_gib: float | None) -> list[tuple[str, bool]]:
    """(line, met) for every variant's peak against `peak_gib` (baseline excluded: DPG is what must fit) and
    for dpg-look-forward's memory ratio."""
    lines = []
    for name, values in report["variants"].items():
        peak_mib = values.get("peak_reserved_mib") or values["peak_memory_mib"]
        if peak_gib is not None and name != "baseline":
            met = peak_mib <= peak_gib * 1024
            lines.append((f"{name}: peak {peak_mib / 1024:.2f} GiB (target <= {peak_gib:g} GiB)", met))
    ratio = report["ratios"].get("dpg-look-forward", {}).get("memory")
    if ratio is not None:
        lines.append((f"dpg-look-forward / baseline memory {ratio:.3f} (target <= {RATIO_TARGET})",
                      ratio <= RATIO_TARGET))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="a JSON report of `rewardbooth bench step --output`")
    parser.add_argument("--peak-gib", type=float, default=None, help="the peak-memory target in GiB (none: ratio only)")
    parser.add_argument("--report-only", action="store_true", help="print the verdicts, exit 0 whatever they are")
    args = parser.parse_args(argv)
    lines = verdicts(json.loads(args.report.read_text()), args.peak_gib)
    for line, met in lines:
        print(f"{'met' if met else 'MISSED'}: {line}")
    return 0 if args.report_only or all(met for _, met in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
