"""``curation dedup sweep|retune``: choose the near-duplicate threshold τ from the stored pairs.

Argument parsing and printing only: the sweep is :mod:`curation_assets.lib.dedup.sweep`, the
retune a ``dedup_job`` run with a new τ (:mod:`curation_assets.lib.dedup.plan`: ``retune``).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib.settings import resolve_paths
from curation_assets.runner import open_runner, prepare_home


def cmd_dedup_sweep(args: argparse.Namespace) -> int:
    """`curation dedup sweep`: removed images and groups at each τ, from the stored pairs."""
    from curation_assets.lib.dedup import committed_sweep, read_truth
    from curation_assets.lib.errors import ConfigError
    from curation_assets.lib.storage import DeltaStore

    paths = resolve_paths(args.home)
    store = DeltaStore(paths.delta_root)
    truth_path = Path(args.truth) if args.truth else paths.source_root / "ground_truth.json"
    try:
        truth = read_truth(truth_path, store) if args.truth or truth_path.is_file() else None
        sweep, about = committed_sweep(store, truth=truth, step=args.step)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    **about,
                    "truth": str(truth_path) if truth is not None else None,
                    "sweep": sweep.to_dicts(),
                }
            )
        )
        return 0
    print(
        f"τ = {about['tau']:g} (stored pairs down to τ_min = {about['tau_min']:g}: "
        f"{about['pairs']} duplicate + {about['candidate_pairs']} candidate pairs)"
        + (f"; truth: {truth_path}" if truth is not None else "")
    )
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(sweep.drop([] if truth is not None else ["true_pairs_found", "precision", "recall"]))
    print("retune: curation dedup retune --tau X (X ≥ τ_min: seconds, no search)")
    return 0


def cmd_dedup_retune(args: argparse.Namespace) -> int:
    """`curation dedup retune --tau X`: re-decide the groups at τ = X, then weights and export.

    ``--verify-band on|off`` switches the local-feature check of the band (a retune too).
    """
    paths = prepare_home(args.home)
    config: dict[str, float | bool] = {}
    if args.tau is not None:
        config["tau"] = args.tau
    if args.tau_min is not None:
        config["tau_min"] = args.tau_min
    if args.verify_band is not None:
        config["verify_band"] = args.verify_band == "on"
    if not config:
        print("error: give --tau, --tau-min or --verify-band", file=sys.stderr)
        return 2
    with open_runner(paths, echo=print, verbose=args.verbose) as runner:
        ok = runner.execute(
            "dedup_job",
            "deduplicated_images",
            run_config={"ops": {"deduplicate": {"config": config}}},
        )
        if ok:
            runner.execute("weights_job", "sample_weights, bias_audit, curated_dataset")
    if runner.failures:
        for what, errors in runner.failures.items():
            for err in errors or ["run failed"]:
                print(f"error: {what}: {err}", file=sys.stderr)
        return 1
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import DEDUP_RUNS

    last = DeltaStore(paths.delta_root).read(DEDUP_RUNS).sort("run_at").row(-1, named=True)
    print(
        f"dedup {last['mode']}: {last['reason']}; τ = {last['tau']:g}, {last['pairs']} pairs, "
        f"{last['removed']} of {last['images']} images removed in {last['seconds']:.2f}s"
    )
    return 0


def add_dedup_parser(sub: Any) -> None:
    """Add ``dedup sweep`` and ``dedup retune`` to the ``curation`` subparsers ``sub``."""
    dd = sub.add_parser("dedup", help="the near-duplicate threshold: sweep it, retune it")
    dd_sub = dd.add_subparsers(dest="dedup", required=True)
    dsw = dd_sub.add_parser(
        "sweep", help="pairs, groups and removed images at each τ, from the stored pairs"
    )
    dsw.add_argument("--home", help="curation home (default $CURATION_HOME or ./.curation)")
    dsw.add_argument(
        "--truth",
        help="ground truth of duplicate groups (CSV group + image_id|source_uri, or the demo's "
        "ground_truth.json; default: the source root's ground_truth.json when present)",
    )
    dsw.add_argument("--step", type=float, default=0.01, help="τ step (default 0.01)")
    dsw.add_argument("--json", action="store_true", help="print JSON")
    dsw.set_defaults(func=cmd_dedup_sweep)
    drt = dd_sub.add_parser(
        "retune", help="re-decide groups at a new τ from the stored pairs, then weights + export"
    )
    drt.add_argument("--home", help="curation home (default $CURATION_HOME or ./.curation)")
    drt.add_argument("--tau", type=float, help="the new cosine threshold (default: kept)")
    drt.add_argument("--tau-min", type=float, help="new floor of the stored pairs (default: kept)")
    drt.add_argument(
        "--verify-band",
        choices=["on", "off"],
        help="check the band's pairs with ORB + RANSAC and let the verified ones join groups",
    )
    drt.set_defaults(func=cmd_dedup_retune)
