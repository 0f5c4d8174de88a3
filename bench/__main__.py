"""Run benchmarks and print their tables: ``python -m bench [NAME [FLAGS ...] ...]``.

With no name, every benchmark runs with its defaults. Flags after a name go to that benchmark
(``python -m bench inference --batch-sizes 1024 --feedback-window 0``; see ``python -m bench.NAME -h``).
"""

from __future__ import annotations

import sys

from bench import inference, ingest, latency, precision, processes, publish, recovery, scale, training

BENCHMARKS = {
    "ingest": ingest.main,
    "inference": inference.main,
    "publish": publish.main,
    "processes": processes.main,
    "precision": precision.main,
    "latency": latency.main,
    "scale": scale.main,
    "recovery": recovery.main,
    "training": training.main,
}


def plan(argv: list[str]) -> list[tuple[str, list[str]]]:
    """The benchmarks ``argv`` names, each with the flags that follow it."""
    if not argv:
        return [(name, []) for name in BENCHMARKS]
    if argv[0] not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {argv[0]!r}; choose from {', '.join(BENCHMARKS)}")
    runs: list[tuple[str, list[str]]] = []
    for arg in argv:
        if arg in BENCHMARKS:
            runs.append((arg, []))
        else:
            runs[-1][1].append(arg)
    return runs


def main() -> None:
    for name, flags in plan(sys.argv[1:]):
        BENCHMARKS[name](flags)
        print()


if __name__ == "__main__":
    main()
