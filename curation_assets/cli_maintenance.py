"""``curation vacuum``: delete the table files no committed state needs (Delta VACUUM).

Argument parsing and printing only: the vacuum is :func:`curation_assets.lib.maintenance.vacuum`.
"""

import argparse
import json
import sys
from typing import Any

import polars as pl

from curation_assets.lib.maintenance import DEFAULT_RETENTION_HOURS, summary, vacuum
from curation_assets.lib.settings import resolve_paths


def cmd_vacuum(args: argparse.Namespace) -> int:
    """`curation vacuum`: list (default) or delete (``--apply``) the files no reader needs."""
    from curation_assets.lib.storage import DeltaStore

    paths = resolve_paths(args.home)
    store = DeltaStore(paths.delta_root)
    try:
        done = vacuum(
            store,
            retention_hours=args.retention_hours,
            dry_run=not args.apply,
            tables=args.table or None,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = summary(done)
    files = int(table["files"].sum())
    size = table["bytes"].sum() if table["bytes"].null_count() < table.height else None
    if args.json:
        print(
            json.dumps(
                {"applied": args.apply, "files": files, "bytes": size, "tables": table.to_dicts()}
            )
        )
        return 0
    verb = "deleted" if args.apply else "would delete (dry run; --apply deletes)"
    mb = f", {size / 2**20:.1f} MiB" if size is not None else ""
    print(
        f"{verb}: {files} files{mb} replaced or orphaned more than {args.retention_hours} h ago; "
        "kept: every version a stage's latest commit records"
    )
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(table.filter(pl.col("files") > 0))
    return 0


def add_vacuum_parser(sub: Any) -> None:
    """Add ``vacuum`` to the ``curation`` subparsers ``sub``."""
    p = sub.add_parser(
        "vacuum",
        help="delete table files replaced or orphaned long ago (dry run unless --apply)",
    )
    p.add_argument("--home", help="curation home (default $CURATION_HOME or ./.curation)")
    p.add_argument(
        "--retention-hours",
        type=int,
        default=DEFAULT_RETENTION_HOURS,
        help=f"keep files replaced less than this long ago (default {DEFAULT_RETENTION_HOURS}, "
        "a week); longer than your longest run",
    )
    p.add_argument("--table", action="append", help="only this table (repeatable)")
    p.add_argument("--apply", action="store_true", help="delete (default: list only)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_vacuum)
