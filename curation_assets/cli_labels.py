"""``curation labels import|export-queue``: labels in, the active-learning queue out.

Argument parsing and printing only: the import is :func:`curation_assets.runner.import_label_file`,
the queue's files :mod:`curation_assets.lib.classify`.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from curation_assets.runner import import_label_file, prepare_home


def cmd_labels_import(args: argparse.Namespace) -> int:
    """`curation labels import FILE`."""
    import dagster as dg

    from curation_assets.lib.classify import LabelImportError

    paths = prepare_home(args.home)
    try:
        with dg.DagsterInstance.get() as instance:
            result = import_label_file(
                paths, Path(args.file), instance=instance, allow_relabel=args.allow_relabel
            )
    except LabelImportError as exc:
        print(f"error: nothing imported.\n{exc}", file=sys.stderr)
        return 1
    print(
        f"imported {result.rows.height} labels from {args.file} "
        f"({result.n_already_labelled} already known, {result.n_blank} blank rows skipped); "
        "re-materialize safety_classifiers to retrain"
    )
    return 0


def cmd_labels_export(args: argparse.Namespace) -> int:
    """`curation labels export-queue`: CSV, Label Studio tasks and an HTML contact sheet."""
    from curation_assets.lib.classify import (
        export_queue_csv,
        export_queue_html,
        export_queue_label_studio,
    )
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import LABEL_QUEUE, RAW_IMAGES

    paths = prepare_home(args.home)
    store = DeltaStore(paths.delta_root)
    queue = store.read(LABEL_QUEUE)
    if queue.is_empty():
        msg = (
            "error: the label queue is empty (no classifier trained yet, or nothing left to "
            "label); import labels, then materialize safety_classifiers and label_queue"
        )
        print(msg, file=sys.stderr)
        return 1
    uris = store.read(RAW_IMAGES, columns=["image_id", "source_uri"]).unique("image_id")
    queue = queue.join(uris, on="image_id", how="left").sort("category", "rank")
    out = Path(args.out) if args.out else paths.home / "label_queue"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        export_queue_csv(queue, out / "label_queue.csv"),
        export_queue_label_studio(queue, out / "label_studio_tasks.json"),
        export_queue_html(queue, out / "contact_sheet.html", max_items=args.max_items).path,
    ]
    print(f"{queue.height} queued images written to:")
    for path in written:
        print(f"  {path}")
    print("Fill the label column (1 = belongs to the category, 0 = not) and run:")
    print(f"  curation labels import {out / 'label_queue.csv'} --home {paths.home}")
    return 0


def add_labels_parser(sub: Any) -> None:
    """Add ``labels import`` and ``labels export-queue`` to the ``curation`` subparsers ``sub``."""
    labels = sub.add_parser("labels", help="import labels; export the active-learning queue")
    labels_sub = labels.add_subparsers(dest="labels", required=True)
    li = labels_sub.add_parser("import", help="append a CSV or Label Studio JSON export")
    li.add_argument("file")
    li.add_argument("--home")
    li.add_argument(
        "--allow-relabel", action="store_true", help="let a file change existing labels"
    )
    li.set_defaults(func=cmd_labels_import)
    le = labels_sub.add_parser("export-queue", help="write label_queue as CSV, JSON and HTML")
    le.add_argument("--home")
    le.add_argument("--out", help="folder (default <home>/label_queue)")
    le.add_argument("--max-items", type=int, default=200, help="cards in the HTML sheet")
    le.set_defaults(func=cmd_labels_export)
