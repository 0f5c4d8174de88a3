"""Run every benchmark and print its table: ``python -m bench [NAME ...]`` (all when none is named)."""

from __future__ import annotations

import sys

from bench import inference, ingest, latency, recovery, scale

BENCHMARKS = {
    "ingest": ingest.main,
    "inference": inference.main,
    "latency": latency.main,
    "scale": scale.main,
    "recovery": recovery.main,
}


def main() -> None:
    names = sys.argv[1:] or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        BENCHMARKS[name]([])
        print()


if __name__ == "__main__":
    main()
