"""``curation bench engine`` / ``embed-workers``: per-shard steps on the local engine and on Ray.

Kept out of ``cli.py`` (its parser only; the benchmark, which imports the assets and torch,
loads when the command runs).
"""

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def cmd_bench_engine(args: argparse.Namespace) -> int:
    """Print :func:`curation_assets.tools.bench_engine.bench` as JSON."""
    from curation_assets.tools.bench_engine import bench

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="bench-engine-"))
    print(json.dumps(bench(args.address, home, args.n_base), indent=1))
    return 0


def add_bench_engine_parser(bench_sub: Any) -> None:
    """Add ``engine`` and ``embed-workers`` to the ``curation bench`` subcommands."""
    p = bench_sub.add_parser(
        "engine",
        help="per-shard steps (embed, score, assign) on the local engine vs a Ray cluster",
    )
    p.add_argument("--address", required=True, help="Ray cluster address (host:port)")
    p.add_argument("--home", help="work folder (default: a new temporary folder)")
    p.add_argument("--n-base", type=int, default=360, help="demo corpus base images")
    p.set_defaults(func=cmd_bench_engine)
    add_bench_embed_parser(bench_sub)


def cmd_bench_embed(args: argparse.Namespace) -> int:
    """Run :mod:`curation_assets.tools.bench_embed`."""
    from curation_assets.tools.bench_embed import run

    return run(args)


def add_bench_embed_parser(bench_sub: Any) -> None:
    """Add ``embed-workers`` to the ``curation bench`` subcommands."""
    from curation_assets.tools.bench_embed import add_arguments

    p = bench_sub.add_parser(
        "embed-workers",
        help="embedding throughput (decode + forward + Delta write) with 1, 2, 4 engine "
        "workers sharing the GPU",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_bench_embed)
