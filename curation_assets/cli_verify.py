"""``curation bench verify``: does verifying borderline near-duplicate pairs lift recall?

Argument parsing and printing only: the benchmark is
:mod:`curation_assets.tools.bench_verify`, the verification
:mod:`curation_assets.lib.dedup.verify`.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Where ``--clothing`` points by default (the shared datasets folder beside the repository).
DEFAULT_CLOTHING = os.environ.get(
    "CURATION_CLOTHING_DIR",
    str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small"),
)


def cmd_bench_verify(args: argparse.Namespace) -> int:
    """Print the benchmark's JSON; a missing dataset is a clear error, not a traceback."""
    from curation_assets.tools.bench_verify import bench_verify

    clothing = Path(args.clothing)
    if not (clothing / args.split).is_dir():
        print(
            f"error: {clothing / args.split} not found: pass --clothing pointing at "
            "clothing-small (folders train/, validation/, test/), or set $CURATION_CLOTHING_DIR",
            file=sys.stderr,
        )
        return 2
    report = bench_verify(
        clothing,
        split=args.split,
        seed=args.seed,
        tau=args.tau,
        band=args.band,
        photos=args.photos,
        calibrate=not args.no_calibration,
        calibrate_split=args.calibrate_split,
        calibrate_photos=args.calibrate_photos,
    )
    if not args.sweep and report.get("calibration"):
        report["calibration"].pop("sweep", None)
    print(json.dumps(report, indent=2))
    return 0


def add_bench_verify_parser(bench_sub: Any) -> None:
    """Add ``verify`` to the ``curation bench`` subcommands."""
    bv = bench_sub.add_parser(
        "verify",
        help="clothing-small with planted edits: pair precision/recall with and without "
        "ORB + RANSAC verification of the band [τ_min, τ)",
    )
    bv.add_argument("--clothing", default=DEFAULT_CLOTHING, help="clothing-small folder")
    bv.add_argument("--split", default="test", help="held-out split the figures are on")
    bv.add_argument("--photos", type=int, help="seeded sample of this many photos (default all)")
    bv.add_argument("--tau", type=float, help="cosine τ (default: the embedder's calibrated τ)")
    bv.add_argument("--band", type=float, default=0.05, help="τ_min = τ − band (default 0.05)")
    bv.add_argument("--seed", type=int, default=0)
    bv.add_argument("--calibrate-split", default="train", help="split the thresholds fit on")
    bv.add_argument("--calibrate-photos", type=int, default=300, help="photos to calibrate on")
    bv.add_argument("--no-calibration", action="store_true", help="skip the calibration rerun")
    bv.add_argument("--sweep", action="store_true", help="print the whole calibration grid")
    bv.set_defaults(func=cmd_bench_verify)
