#!/usr/bin/env python3
"""Condense Nsight Compute CSV reports (ncu --csv --page raw) to one line per kernel.

    python bench/ncu_summary.py REPORT.csv [...]

Prints each kernel's grid, duration, warp instructions executed, DRAM / L2 throughput (% of
peak), issue-active %, and its largest stall reasons (warps stalled per issued instruction).
"""

from __future__ import annotations

import csv
import sys


def num(v: str) -> float | None:
    try:
        return float(v.replace(",", ""))
    except ValueError:
        return None


def main(paths: list[str]) -> int:
    for path in paths:
        with open(path) as f:
            rows = list(csv.reader(line for line in f if line.startswith('"')))
        if not rows:
            continue
        hdr = rows[0]
        for row in rows[2:]:
            m = dict(zip(hdr, row, strict=False))
            stalls = {
                k.removeprefix("smsp__average_warps_issue_stalled_").removesuffix("_per_issue_active.ratio"): num(v)
                for k, v in m.items()
                if k.startswith("smsp__average_warps_issue_stalled_") and (num(v) or 0) > 0.05
            }
            top = sorted(stalls.items(), key=lambda kv: -(kv[1] or 0))[:5]
            print(
                f"{m.get('Kernel Name', '?'):16s} grid {m.get('Grid Size', '?'):>12s}"
                f" {num(m.get('gpu__time_duration.sum', '')) or 0:9.0f} ns"
                f" inst {num(m.get('sm__inst_executed.sum', '')) or 0:12.0f}"
                f" dram {m.get('dram__throughput.avg.pct_of_peak_sustained_elapsed', '?'):>6s}%"
                f" l2 {m.get('lts__throughput.avg.pct_of_peak_sustained_elapsed', '?'):>6s}%"
                f" issue {m.get('smsp__issue_active.avg.pct_of_peak_sustained_active', '?'):>6s}%"
                f"  stalls " + " ".join(f"{k}={v:.2f}" for k, v in top)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
