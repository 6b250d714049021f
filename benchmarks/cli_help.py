"""Start-up of the command line: ``python -m audiotag --help`` (and every command's ``--help``) against
the baseline ``python -c "import torch"``, each the median of several fresh processes.

    python benchmarks/cli_help.py [--repeats 5]

Prints the seconds of each, the ratio to the baseline, the core count and the load average; the goal
is under 1.5 s on 2 cores (issue 25), which a CLI importing torch at start-up cannot meet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = ["leaderboard", "submit", "report", "package", "weights", "embed", "new-competition", "tune"]
COMMANDS += ["pretrain"]


def seconds(argv: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, Python {sys.version.split()[0]}")
    baseline = seconds(["-c", "import torch"], args.repeats)
    label = 'python -c "import torch"'
    print(f"{label:<40} {baseline:6.2f} s  (baseline)")
    for argv in [["--help"], *([c, "--help"] for c in COMMANDS)]:
        took = seconds(["-m", "audiotag", *argv], args.repeats)
        label = "audiotag " + " ".join(argv)
        print(f"{label:<40} {took:6.2f} s  {took / baseline:5.2f}x the baseline")


if __name__ == "__main__":
    main()
