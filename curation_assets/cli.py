"""``curation`` command line: run the pipeline headless, open the UI, build the demo, benchmark.

Argument parsing and printing only: the headless sequence is :mod:`curation_assets.runner`,
the demo, evaluation and benchmarks are :mod:`curation_assets.tools`.
"""

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from curation_assets.cli_dedup import add_dedup_parser
from curation_assets.cli_engine import add_bench_engine_parser
from curation_assets.cli_labels import add_labels_parser
from curation_assets.cli_maintenance import add_vacuum_parser
from curation_assets.cli_quality import add_quality_parsers
from curation_assets.cli_verify import add_bench_verify_parser
from curation_assets.lib.settings import Paths, folder_or_uri, resolve_paths, save_settings
from curation_assets.runner import (
    Runner,
    ShardSelectionError,
    import_label_file,
    open_runner,
    prepare_home,
    ready_shards,
    run_pipeline,
)
from curation_assets.tools.bench_lookup import add_bench_lookup_parser
from curation_assets.tools.bench_partitions import add_bench_partitions_parser

logger = logging.getLogger("curation")


DEMO_WEIGHTS_CONFIG = {"weights_and_audit": {"config": {"keywords": ["warm", "cool"]}}}
"""The demo's captions name the palette: its bias audit takes them as keywords."""


def cmd_run(args: argparse.Namespace) -> int:
    """Materialize every asset for every shard and print a summary."""
    roots = {k: folder_or_uri(v) for k in ("delta_root", "export_root") if (v := getattr(args, k))}
    if roots:  # recorded in the home; credentials stay in the environment, never saved
        save_settings(resolve_paths(args.home).home, **roots)
    paths = prepare_home(args.home, args.source)
    demo = args.source is None
    after_embed: Callable[[Runner], None] | None = None
    if demo:
        from curation_assets.tools.demo import build_demo_corpus, write_seed_labels

        t0 = time.perf_counter()
        corpus = build_demo_corpus(paths.source_root)
        print(f"demo corpus ready in {paths.source_root} ({time.perf_counter() - t0:.1f}s)")

        def import_seed_labels(runner: Runner) -> None:
            seed = write_seed_labels(corpus)
            done = import_label_file(paths, seed, instance=runner.instance)
            print(f"demo seed labels: {done.rows.height} new ({done.n_already_labelled} known)")

        after_embed = import_seed_labels
    try:
        shards = ready_shards(paths.source_root, args.shards, echo=print)
    except ShardSelectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with open_runner(paths, echo=print, verbose=args.verbose, force=args.force) as runner:
        run_pipeline(
            runner,
            shards,
            retrain=args.retrain_centroids,
            after_embed=after_embed,
            weights_config=DEMO_WEIGHTS_CONFIG if demo else None,
        )
        from curation_assets.similar_run import run_similarity

        run_similarity(runner, [s.key for s in shards])
    _print_summary(paths, runner.stage_seconds, demo=demo)
    if runner.failures:
        for what, errors in runner.failures.items():
            for err in errors or ["run failed"]:
                print(f"error: {what}: {err}", file=sys.stderr)
        return 1
    return 0


def _table_counts(delta_root: str) -> dict[str, int]:
    """Rows of every table of the registry, in pipeline order (0 for a table not written)."""
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import TABLES

    store = DeltaStore(delta_root)
    return {name: store.scan(s).select(pl.len()).collect().item() for name, s in TABLES.items()}


def _print_summary(paths: Paths, stage_seconds: dict[str, float], *, demo: bool) -> None:
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import QUARANTINE

    print("\nrows per table:")
    counts = _table_counts(paths.delta_root)
    width = max(18, *map(len, counts))
    for name, n in counts.items():
        print(f"  {name:<{width}} {n:>8}")
    reasons = (
        DeltaStore(paths.delta_root)
        .scan(QUARANTINE)
        .group_by("stage", "reason")
        .len()
        .sort("stage", "reason")
        .collect()
    )
    print("quarantined by reason:")
    for stage, reason, n in reasons.iter_rows():
        print(f"  {stage}/{reason:<20} {n:>6}")
    from curation_assets.lib.tables import SAFETY_CLASSIFIERS

    classifiers = (
        DeltaStore(paths.delta_root)
        .read(SAFETY_CLASSIFIERS)
        .select("category", "status", "threshold", "oof_recall", "oof_precision", "n_pos", "n_neg")
    )
    print("classifiers (out-of-fold recall / precision at the threshold):")
    for row in classifiers.iter_rows(named=True):
        metrics = " ".join(
            f"{k}={row[k]:.3f}" if row[k] is not None else f"{k}=-"
            for k in ("threshold", "oof_recall", "oof_precision")
        )
        print(f"  {row['category']:<20} {row['status']:<9} {metrics} ", end="")
        print(f"labels={row['n_pos']}+/{row['n_neg']}-")
    print("time per stage (all shards):")
    for step, sec in stage_seconds.items():
        print(f"  {step:<18} {sec:>7.1f}s")
    if demo:
        from curation_assets.tools.demo import load_ground_truth
        from curation_assets.tools.evaluate import evaluate_ingest

        gt = load_ground_truth(paths.source_root / "ground_truth.json")
        report = evaluate_ingest(gt, DeltaStore(paths.delta_root))
        print("demo ground truth (ingest):")
        for k, v in report.items():
            print(f"  {k:<34} {v}")
        from curation_assets.tools.demo import DEMO_CATEGORY
        from curation_assets.tools.evaluate import evaluate_filter

        report = evaluate_filter(
            gt,
            DeltaStore(paths.delta_root),
            category=DEMO_CATEGORY,
            positive=("attr_source", "photo"),
            attribute=("attr_palette", "warm"),
        )
        print(f"demo ground truth (filter, category {DEMO_CATEGORY} = photographs):")
        for k, v in report.items():
            print(f"  {k:<34} {v}")
        _print_dedup(paths, gt)
    print(f"\nDelta tables: {paths.delta_root}\nExport: {paths.export_root}")
    print(f"Dagster home: {paths.dagster_home}")
    print(f"Open the UI on the same home: curation dev --home {paths.home}")


def _print_dedup(paths: Paths, gt: pl.DataFrame) -> None:
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import DEDUP_RUNS, N_CLUSTERINGS
    from curation_assets.tools.evaluate import evaluate_dedup

    store = DeltaStore(paths.delta_root)
    runs = store.read(DEDUP_RUNS)
    if runs.is_empty():
        print("demo ground truth (dedup): no dedup run")
        return
    last = runs.sort("run_at").row(-1, named=True)
    print(
        f"dedup: {last['mode']} ({last['reason']}), tau={last['tau']:.3f}, "
        f"{last['images']} images, {last['pairs']} pairs, {last['removed']} removed, "
        f"pair recall of 1..{N_CLUSTERINGS} clusterings vs exhaustive {last['recall']}"
    )
    print("demo ground truth (near-duplicates, planted edits of one base image):")
    for k, v in evaluate_dedup(gt, store).items():
        print(f"  {k:<34} {v}")
    from curation_assets.lib.tables import SAMPLE_WEIGHTS
    from curation_assets.tools.evaluate import evaluate_weights

    if store.exists(SAMPLE_WEIGHTS.name):
        print("demo ground truth (sample weights; palette share, filter-correlated attribute):")
        for k, v in evaluate_weights(gt, store, attribute=("attr_palette", "warm")).items():
            print(f"  {k:<38} {v}")


def cmd_explain(args: argparse.Namespace) -> int:
    """`curation explain TARGET`: every decision about one input, from the Delta tables."""
    from curation_assets.lib.explain import (
        AsOfError,
        TargetError,
        explain,
        parse_as_of,
        render_text,
    )
    from curation_assets.lib.storage import DeltaStore

    paths = resolve_paths(args.home)
    try:
        as_of = parse_as_of(args.as_of)
        trace = explain(
            DeltaStore(paths.delta_root),
            args.target,
            source_root=paths.source_root,
            as_of=as_of,
            export_dir=paths.export_root,
        )
    except AsOfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TargetError as exc:
        if args.json:
            print(json.dumps({"error": "not_found", "target": args.target, "message": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(trace.to_json(), indent=2) if args.json else render_text(trace))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Run ``dagster dev`` (webserver + daemon) on the curation home."""
    paths = prepare_home(args.home)
    paths.source_root.mkdir(parents=True, exist_ok=True)
    import dagster as dg

    from curation_assets.defs.run_health import guard_runs

    with dg.DagsterInstance.get() as instance:  # runs left STARTED by a dev that died
        guard_runs(instance, echo=print, watch=False, by="curation dev")
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    cmd = ["dagster", "dev", "-h", args.host, "-p", str(args.port)]
    if workspace.is_file():
        cmd += ["-w", str(workspace)]
    else:
        cmd += ["-m", "curation_assets.definitions"]
    beside = Path(sys.executable).with_name("dagster")  # the same environment as this CLI
    dagster = str(beside) if beside.is_file() else shutil.which("dagster")
    if dagster is None:
        print("error: the `dagster` command is not installed in this environment", file=sys.stderr)
        return 2
    print(f"DAGSTER_HOME={paths.dagster_home}\n$ {' '.join(cmd)}")
    return subprocess.call([dagster, *cmd[1:]])


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the demo corpus only."""
    from curation_assets.tools.demo import build_demo_corpus

    dest = Path(args.dest) if args.dest else resolve_paths(args.home).source_root
    corpus = build_demo_corpus(dest, seed=args.seed)
    print(json.dumps({"root": str(corpus.root), "shards": corpus.shards}, indent=2))
    return 0


def cmd_bench_incremental(args: argparse.Namespace) -> int:
    """Benchmark a full run against the update for one new ~1 % shard; print JSON."""
    from curation_assets.tools.bench_pipeline import bench_incremental

    report = bench_incremental(
        Path(args.images),
        base_shards=args.base_shards,
        new_share=args.new_share,
        limit=args.limit,
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_bench_daemon(args: argparse.Namespace) -> int:
    """Time a new ~1 % shard through ``dagster dev``'s sensors and automation; print JSON."""
    import signal

    from curation_assets.tools.bench_daemon import bench_daemon

    # SIGTERM (kill, timeout) unwinds like Ctrl-C so that the dagster dev group is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = bench_daemon(
        Path(args.images),
        base_shards=args.base_shards,
        new_share=args.new_share,
        limit=args.limit,
        timeout_s=args.timeout,
        interval_s=args.interval,
        keep=args.keep,
    )
    if not args.runs:
        for phase in ("base", "new_shard"):
            report[phase].pop("run_list")
    print(json.dumps(report, indent=2))
    return 0


def cmd_bench_embed(args: argparse.Namespace) -> int:
    """Benchmark the embedding stage and print JSON."""
    from curation_assets.lib.embed import (
        DEFAULT_OPEN_CLIP_MODEL,
        DEFAULT_OPEN_CLIP_PRETRAINED,
        DEFAULT_TIMM_MODEL,
        EFFICIENTNET_LITE0_PACKAGE,
        EmbedderSpec,
    )
    from curation_assets.tools.bench import bench_embed

    timm = args.backend == "timm"
    model = args.model or (DEFAULT_TIMM_MODEL if timm else DEFAULT_OPEN_CLIP_MODEL)
    pretrained = args.pretrained or (
        EFFICIENTNET_LITE0_PACKAGE if timm else DEFAULT_OPEN_CLIP_PRETRAINED
    )
    spec = EmbedderSpec(
        backend=args.backend,
        model_name=model,
        pretrained=None if pretrained == "random" else pretrained,
        model_config=args.model_config,
        device=args.device,
    )
    report = bench_embed(
        Path(args.images),
        spec,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
        repeats=args.repeats,
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_bench_dedup(args: argparse.Namespace) -> int:
    """Benchmark cluster-based near-duplicate search against exhaustive search; print JSON."""
    from curation_assets.tools.bench_dedup import bench_dedup, bench_dedup_clothing

    if args.clothing:
        report = bench_dedup_clothing(Path(args.clothing), seed=args.seed)
    else:
        report = bench_dedup(
            args.n,
            args.dim,
            seed=args.seed,
            k=args.k,
            tau=args.tau,
            exhaustive_queries=args.exhaustive_queries,
            top=args.top,
            ivf=not args.no_ivf,
            ivf_nprobe_cap=args.ivf_nprobe_cap,
        )
    print(json.dumps(report, indent=2))
    return 0


def cmd_bench_scale(args: argparse.Namespace) -> int:
    """Global stages at corpus scale: full run against a new 1 % shard; print JSON."""
    from curation_assets.tools.bench_scale import bench_scale

    report = bench_scale(
        args.n,
        shards=args.shards,
        dim=args.dim,
        new_share=args.new_share,
        batch=args.batch,
        seed=args.seed,
        home=args.home,
        jobs=tuple(args.jobs),
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    """`curation bench quality`: per-image µs of the signals vs the decode, as JSON."""
    from curation_assets.tools.bench_quality import bench_quality

    result = bench_quality(
        Path(args.images), limit=args.limit, repeats=args.repeats, resize=args.resize
    )
    print(json.dumps(result, indent=2))
    return 0


def _add_shard_split_args(p: argparse.ArgumentParser) -> None:
    """The corpus options of the benchmarks that split a folder into base + new shards."""
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--base-shards", type=int, default=9, help="shards of the base corpus")
    p.add_argument("--new-share", type=float, default=0.01, help="share in the new shard")
    p.add_argument("--limit", type=int, help="use at most this many images")


def cmd_similar(args: argparse.Namespace) -> int:
    """`curation similar TARGET`: nearest images of a path, an image id or a text query."""
    import re

    from curation_assets.defs.resources import ImageEmbedder
    from curation_assets.lib.embed import load_embedder
    from curation_assets.lib.similar.query import (
        resolve_target,
        similar_images,
        write_contact_sheet,
    )
    from curation_assets.lib.storage import DeltaStore

    paths = resolve_paths(args.home)
    store = DeltaStore(paths.delta_root)
    spec = ImageEmbedder(
        backend=args.backend,
        model_name=args.model or "",
        pretrained=args.pretrained or "",
        model_config_path=args.model_config or "",
    ).spec()
    target = resolve_target(store, args.target, lambda: load_embedder(spec))
    results = similar_images(store, target, args.k, nprobe=args.nprobe)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.target).name)[:40].strip("_") or "query"
    sheet = Path(args.html) if args.html else paths.home / "similar" / f"{slug}.html"
    write_contact_sheet(target, results, sheet)
    if args.json:
        print(
            json.dumps(
                {
                    "target": args.target,
                    "kind": target.kind,
                    "html": str(sheet),
                    "results": results.to_dicts(),
                },
                default=str,
            )
        )
        return 0
    print(f"{results.height} images most similar to {args.target!r} ({target.kind}):")
    for rec in results.iter_rows(named=True):
        print(
            f"{rec['rank']:>3}  {rec['similarity']:.4f}  {rec['image_id'][:12]}  "
            f"{rec['source_uri']}"
        )
    print(f"contact sheet: {sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``curation``."""
    p = argparse.ArgumentParser(prog="curation", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialize every asset for every shard (headless)")
    run.add_argument("--home", help="curation home (default $CURATION_HOME or ./.curation)")
    run.add_argument(
        "--source",
        help="folder whose folders/.tar/.csv/.parquet entries are shards (default: demo corpus)",
    )
    run.add_argument("--shards", help="comma-separated shard keys to run (default: all)")
    run.add_argument(
        "--delta-root",
        help="folder or s3://bucket/prefix of every table, kept in the home's settings "
        "(credentials: AWS_* or CURATION_STORAGE_OPTIONS in the environment)",
    )
    run.add_argument("--export-root", help="folder or s3:// URI of the export files (likewise)")
    run.add_argument(
        "--retrain-centroids",
        action="store_true",
        help="retrain the five k-means clusterings (default: reuse them once trained)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="redo every shard's work (default: skip what is already done and unchanged)",
    )
    run.set_defaults(func=cmd_run)

    dev = sub.add_parser("dev", help="open the Dagster UI + daemon on the curation home")
    dev.add_argument("--home")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)

    ex = sub.add_parser(
        "explain",
        help="why is this image where it is? every decision about one input (0 ok, 3 unknown)",
    )
    ex.add_argument("target", help="a path (file, <tar>#<member>) or an image id (8+ hex chars)")
    ex.add_argument("--json", action="store_true", help="print the trace as JSON")
    ex.add_argument(
        "--as-of",
        action="append",
        default=[],
        metavar="WHEN",
        help="ISO timestamp (UTC if no zone) for every table, and/or TABLE=VERSION (repeatable)",
    )
    ex.add_argument("--home", help="curation home (default $CURATION_HOME or ./.curation)")
    ex.set_defaults(func=cmd_explain)

    demo = sub.add_parser("demo", help="build the demo corpus (shards + ground_truth.json)")
    demo.add_argument("--home")
    demo.add_argument("--dest", help="folder to write (default: <home>/sources)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    add_labels_parser(sub)
    add_dedup_parser(sub)
    add_vacuum_parser(sub)

    sim = sub.add_parser(
        "similar", help="nearest images of an image file, an image id or a text query"
    )
    sim.add_argument("target", help="image path, image_id (or 8+ hex prefix), or text")
    sim.add_argument("-k", type=int, default=20, help="neighbours (default 20)")
    sim.add_argument("--home")
    sim.add_argument("--html", help="contact sheet path (default <home>/similar/<target>.html)")
    sim.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sim.add_argument("--nprobe", type=int, default=32, help="inverted lists searched")
    sim.add_argument(
        "--backend",
        choices=["timm", "open_clip"],
        default="timm",
        help="embedder for new files and text (must be the index's model)",
    )
    sim.add_argument("--model", help="model name (default per backend)")
    sim.add_argument("--pretrained", help="pretrained tag/path ('random' = random weights)")
    sim.add_argument("--model-config", help="open_clip model config JSON")
    sim.set_defaults(func=cmd_similar)
    add_quality_parsers(sub)

    bench = sub.add_parser("bench", help="benchmarks, printed as JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    be = bench_sub.add_parser("embed", help="end-to-end vs bare-forward embedding throughput")
    be.add_argument("--images", required=True, help="folder, tar or manifest of images")
    be.add_argument("--backend", choices=["timm", "open_clip"], default="timm")
    be.add_argument("--model", help="model name (default per backend)")
    be.add_argument("--pretrained", help="pretrained tag/path ('random' = random weights)")
    be.add_argument("--model-config", help="open_clip model config JSON")
    be.add_argument("--device", default="auto")
    be.add_argument("--limit", type=int, help="use only the first N inputs")
    be.add_argument("--batch-size", type=int, default=0, help="0 = auto (16 CPU, 128 CUDA)")
    be.add_argument("--workers", type=int, default=2, help="decode threads")
    be.add_argument("--repeats", type=int, default=3)
    be.set_defaults(func=cmd_bench_embed)
    bi = bench_sub.add_parser(
        "incremental", help="full run vs the update for one new ~1 %% shard (in-process)"
    )
    _add_shard_split_args(bi)
    bi.set_defaults(func=cmd_bench_incremental)
    bdm = bench_sub.add_parser(
        "daemon",
        help="a new ~1 %% shard through dagster dev's sensors and automation (latency, work)",
    )
    _add_shard_split_args(bdm)
    bdm.add_argument("--timeout", type=float, default=3600, help="seconds per phase")
    bdm.add_argument("--interval", type=int, help="sensor interval in s (default 30)")
    bdm.add_argument("--keep", action="store_true", help="keep the home (tables, runs, log)")
    bdm.add_argument("--runs", action="store_true", help="list every run in the JSON")
    bdm.set_defaults(func=cmd_bench_daemon)

    bd = bench_sub.add_parser("dedup", help="near-duplicate pair recall and time vs exhaustive")
    bd.add_argument("--n", type=int, default=100_000, help="synthetic embeddings")
    bd.add_argument("--dim", type=int, default=512)
    bd.add_argument("--seed", type=int, default=0)
    bd.add_argument("--k", type=int, help="centroids per clustering (default: sqrt rule)")
    bd.add_argument("--tau", type=float, help="cosine threshold (default: the bench's)")
    bd.add_argument("--top", type=int, default=1, help="nearest centroids per point")
    bd.add_argument(
        "--exhaustive-queries",
        type=int,
        help="time exhaustive search on this many queries and extrapolate (default: by size)",
    )
    bd.add_argument(
        "--ivf-nprobe-cap",
        type=int,
        default=256,
        help="largest nprobe the IndexIVFFlat baseline tries (1, 2, 4, ...; default 256)",
    )
    bd.add_argument("--no-ivf", action="store_true", help="skip the IndexIVFFlat peer baseline")
    bd.add_argument("--clothing", help="instead: real photos with planted edits (folder)")
    bd.set_defaults(func=cmd_bench_dedup)
    add_bench_verify_parser(bench_sub)
    add_bench_partitions_parser(bench_sub)
    add_bench_lookup_parser(bench_sub)
    add_bench_engine_parser(bench_sub)

    bs = bench_sub.add_parser(
        "scale", help="global stages at N synthetic images: full run vs a new 1 %% shard"
    )
    bs.add_argument("--n", type=int, default=100_000, help="images in the base corpus")
    bs.add_argument("--shards", type=int, default=100, help="base shards")
    bs.add_argument("--dim", type=int, default=512)
    bs.add_argument("--new-share", type=float, default=0.01, help="new shard, share of N")
    bs.add_argument(
        "--batch", type=int, default=4, help="then this many new shards in one update (0: skip)"
    )
    bs.add_argument("--seed", type=int, default=0)
    bs.add_argument("--home", help="work folder (default: a new temporary folder, kept)")
    bs.add_argument(
        "--jobs",
        nargs="+",
        default=["dedup_job", "weights_job"],
        help="global jobs to time after the assignments",
    )
    bs.set_defaults(func=cmd_bench_scale)
    bq = bench_sub.add_parser("quality", help="pixel-quality signals' cost against the decode")
    bq.add_argument("--images", required=True, help="folder, tar or manifest of images")
    bq.add_argument("--limit", type=int, help="use only the first N inputs")
    bq.add_argument("--repeats", type=int, default=3, help="timings per image (fastest kept)")
    bq.add_argument("--resize", type=int, help="re-encode with this longer side first (px)")
    bq.set_defaults(func=cmd_bench_quality)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``curation`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt as exc:  # runner.Interrupted says where, and what became of the run
        print(f"interrupted {exc}".strip(), file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.verbose:
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
