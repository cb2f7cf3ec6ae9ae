"""``python -m benchmarks --db sqlite|postgres --broker orm|redis --size smoke|full``

See docs/BENCHMARKS.md. Everything runs in one process plus real worker subprocesses
(``qcluster`` with 2 workers, ``eventbus_drain``, the peer's ``deliver_events``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--broker", choices=["orm", "redis"], default="orm")
    parser.add_argument("--size", choices=["smoke", "full"], default="smoke")
    parser.add_argument(
        "--only",
        action="append",
        choices=["emit", "throughput", "writes", "latency", "backlog", "memory"],
        help="Run only these sections (repeatable). Default: all.",
    )
    parser.add_argument(
        "--no-peer",
        action="store_true",
        help="Skip the peers (django-domain-events, procrastinate).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Where to write the results.")
    args = parser.parse_args(argv)

    suffix = os.environ.get("EVENTBUS_TEST_SUFFIX", "main")
    os.environ.update(
        BENCH_DB=args.db,
        BENCH_BROKER=args.broker,
        BENCH_SUFFIX=suffix,
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    peer_error = ""
    if args.no_peer:
        peer_error = "skipped (--no-peer)"
    else:
        try:
            import django_domain_events  # noqa: F401
        except ImportError as exc:
            peer_error = f"not installed ({exc}); pip install 'eventbus_app[bench]'"
    os.environ["BENCH_PEER"] = "0" if peer_error else "1"
    procrastinate_error = ""
    if args.no_peer:
        procrastinate_error = "skipped (--no-peer)"
    elif args.db != "postgres":
        procrastinate_error = "needs PostgreSQL"
    else:
        try:
            import procrastinate  # noqa: F401
        except ImportError as exc:
            procrastinate_error = f"not installed ({exc}); pip install 'eventbus_app[bench]'"
    os.environ["BENCH_PROCRASTINATE"] = "0" if procrastinate_error else "1"
    args.procrastinate_error = procrastinate_error

    from .runner import run

    return run(args, peer_error)


if __name__ == "__main__":
    sys.exit(main())
