"""``curation quality`` and ``curation heads check``: pixel-quality signals and embedding heads.

Argument parsing and printing only: the signals and their report are
:mod:`curation_assets.lib.quality`, the heads :mod:`curation_assets.lib.classify.heads`.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib.settings import resolve_paths


def cmd_quality(args: argparse.Namespace) -> int:
    """`curation quality`: pixel-quality flag counts, distributions, most extreme images."""
    from curation_assets.lib.quality.report import (
        corpus_stats,
        quality_html,
        quality_text,
        worst_uris,
    )
    from curation_assets.lib.quality.signals import CHECKS
    from curation_assets.lib.storage import DeltaStore

    paths = resolve_paths(args.home)
    store = DeltaStore(paths.delta_root)
    shards = args.shard.split(",") if args.shard else None
    thresholds = dict(kv.split("=", 1) for kv in args.threshold or [])
    stats, read = corpus_stats(
        store, shards, thresholds={k: float(v) for k, v in thresholds.items()}, k=args.worst
    )
    if args.check:
        keep = [c for c in args.check.split(",") if c]
        unknown = sorted(set(keep) - set(CHECKS))
        if unknown:
            print(f"error: unknown checks {unknown}; known: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
        stats.worst = stats.worst.filter(pl.col("check").is_in(keep))
    uris = worst_uris(store, stats.worst)
    print(quality_text(stats, read, uris))
    if args.html:
        print(f"\ncontact sheet: {quality_html(stats, uris, Path(args.html))}")
    return 0


def cmd_heads_check(args: argparse.Namespace) -> int:
    """`curation heads check FILE`: load an MLP head and score the stored embeddings."""
    from curation_assets.lib.classify.heads import head_report, load_head
    from curation_assets.lib.storage import DeltaStore

    paths = resolve_paths(args.home)
    head = load_head(args.file)
    shards = args.shard.split(",") if args.shard else None
    report = head_report(DeltaStore(paths.delta_root), head, shards, top=args.top)
    print(json.dumps(report, indent=2, default=str))
    print(
        f"ok: add {str(head.path)!r} to classifier_scores' config embedding_heads "
        f"(and pretrained_thresholds: {{{head.name!r}: T}} to filter on it)",
        file=sys.stderr,
    )
    return 0


def add_quality_parsers(sub: Any) -> None:
    """Add ``quality`` and ``heads check`` to the ``curation`` subparsers ``sub``."""
    qp = sub.add_parser("quality", help="pixel-quality signals: flag counts, distributions, worst")
    qp.add_argument("--home")
    qp.add_argument("--shard", help="comma-separated shard keys (default: all)")
    qp.add_argument("--check", help="comma-separated checks whose worst images to list")
    qp.add_argument("--worst", type=int, default=5, help="most extreme images per check")
    qp.add_argument(
        "--threshold", action="append", help="CHECK=VALUE override (repeatable), e.g. blurry=50"
    )
    qp.add_argument("--html", help="also write an HTML contact sheet of the worst images here")
    qp.set_defaults(func=cmd_quality)

    heads = sub.add_parser("heads", help="MLP heads over the stored embeddings (safetensors)")
    heads_sub = heads.add_subparsers(dest="heads_cmd", required=True)
    hc = heads_sub.add_parser("check", help="validate a head and score the stored embeddings")
    hc.add_argument("file", help="the head's .safetensors file")
    hc.add_argument("--home")
    hc.add_argument("--shard", help="comma-separated shard keys (default: all)")
    hc.add_argument("--top", type=int, default=5, help="highest-scoring images listed")
    hc.set_defaults(func=cmd_heads_check)
