"""README screenshots of the UI: an image's explanation, the τ sweep and pixel quality.

``python -m curation_assets.tools.screenshots --home H --out docs [--image ID]`` on a home
where ``curation run`` ran (the demo). It materializes ``image_explanation`` for one image
(default: a planted near-duplicate the dedup removed), starts ``dagster dev`` on loopback,
drives Debian's chromium through Playwright (``executable_path``; no browser is downloaded),
opens each asset's markdown metadata and saves a PNG per view. Not a test: the browser test
(``test_browser.py``) checks the UI; this only refreshes the pictures.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

#: (file name, asset, partition or None, markdown metadata key) of each screenshot.
VIEWS = (
    ("explain-image.png", "image_explanation", None, "explanation"),
    ("tau-sweep.png", "deduplicated_images", None, "tau_sweep"),
    ("pairs-at-tau.png", "deduplicated_images", None, "pairs_at_tau"),
    ("quality-worst.png", "image_quality", "shard-000", "worst_examples"),
)


def removed_near_duplicate(delta_root: Path) -> str:
    """The image_id of a near duplicate the last dedup removed (the smallest id)."""
    import polars as pl

    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import DEDUPLICATED_IMAGES

    rows = DeltaStore(str(delta_root)).read(DEDUPLICATED_IMAGES).filter(~pl.col("kept"))
    if rows.is_empty():
        raise SystemExit("no removed near duplicate in this home: run `curation run` first")
    return str(rows.sort("image_id")["image_id"][0])


def explain_in_ui(home: Path, image: str) -> None:
    """Materialize ``image_explanation`` for ``image`` on the home's instance."""
    import dagster as dg

    from curation_assets.definitions import build_defs
    from curation_assets.runner import prepare_home

    prepare_home(str(home))
    defs = build_defs(str(home))
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("image_explanation")],
            run_config={"ops": {"image_explanation": {"config": {"image": image}}}},
        )
    if not result.success:
        raise SystemExit("materializing image_explanation failed")


def take(home: Path, out: Path, image: str) -> list[Path]:
    """Screenshots of :data:`VIEWS`; returns the files written."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from curation_assets.tools.devserver import dagster_dev

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install chromium)")
    explain_in_ui(home, image)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    log = Path(tempfile.mkdtemp(prefix="curation-shots-")) / "dagster-dev.log"
    with dagster_dev(home, log) as dev, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, asset, partition, key in VIEWS:
            url = f"{dev.url}/assets/{asset}"
            if partition:
                url += f"?partition={partition}"
            page.goto(url)
            skip = page.get_by_role("button", name="Skip")  # "Join the Dagster community"
            try:
                skip.click(timeout=5_000)
            except PlaywrightTimeout:
                pass
            # a row's text runs on into its timestamp ("explanationNov 30, …"): no \b
            row = page.locator("tr", has_text=re.compile(rf"^\s*{re.escape(key)}(?![a-z0-9_])"))
            row.first.wait_for(timeout=60_000)
            row.first.get_by_text("Show Markdown").click()
            dialog = page.get_by_role("dialog")
            dialog.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # thumbnails decode
            path = out / name
            dialog.screenshot(path=str(path))
            written.append(path)
            page.keyboard.press("Escape")
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="README screenshots of the UI")
    parser.add_argument("--home", required=True, help="curation home where `curation run` ran")
    parser.add_argument("--out", default="docs", help="folder for the PNG files")
    parser.add_argument("--image", help="image_id to explain (default: a removed duplicate)")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    os.environ.setdefault("CURATION_HOME", str(home))
    image = args.image or removed_near_duplicate(home / "delta")
    for path in take(home, Path(args.out), image):
        print(path)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
