"""End to end in a real browser: `dagster dev` on loopback, driven through Debian's Chromium.

Run it alone with ``pytest -m browser -s`` (``-s`` prints where the screenshots are); set
``CURATION_TEST_ARTIFACTS=DIR`` to keep them. Skipped only when ``chromium`` is not installed
(``.ci/run`` installs it with apt).

What it does, in one temporary curation home:

1. writes one small folder shard (12 JPEGs + ``_SUCCESS``) and registers it as a partition
   before the daemon starts, so ``shard_sensor`` (RUNNING) skips it and launches nothing;
2. starts ``dagster dev -w workspace.yaml`` (webserver + daemon) on a free loopback port;
3. in Chromium: the asset catalog lists every asset of the Definitions; the global lineage
   graph (all groups expanded) is captured;
4. opens ``per_shard_job``, clicks *Materialize all*, picks the shard in the partition dialog,
   launches one run, follows the toast to the run page and waits there for *Success*;
5. opens ``raw_images``: the status panel shows its row count, the metadata table the ingest
   counts, and the Checks tab shows ``every_input_accounted_for`` passed; the same for
   ``image_embeddings`` and ``dims_and_norms``;
6. stops Chromium and the whole ``dagster dev`` process group, and checks nothing is left.
"""

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from curation_assets.tools.devserver import dagster_dev
from curation_assets_tests.browser_helpers import (
    CHROMIUM_ARGS,
    VIEWPORT,
    artifacts_dir,
    assert_no_strays,
    chromium_path,
    prepare_home,
    register_partitions,
    runs,
    write_shard,
)

SHARD = "shard-ui"
N_IMAGES = 12
JOB = "per_shard_job"
RUN_TIMEOUT_MS = 300_000
UI_TIMEOUT_MS = 60_000

Shot = Callable[..., None]


def expected_asset_keys(home: Path) -> set[str]:
    from curation_assets.definitions import build_defs

    graph = build_defs(str(home)).resolve_asset_graph()
    return {k.to_user_string() for k in graph.get_all_asset_keys()}


def nav(page, label: str):
    """A link of the left navigation, by its label."""
    return page.get_by_role("link", name=re.compile(rf"(^|\s){label}$")).first


def text(pattern: str) -> re.Pattern:
    """A regex over the page's rendered text (the UI breaks long names with U+200B)."""
    return re.compile(pattern, re.DOTALL)


def visible_text(page) -> str:
    """The page's rendered text without zero-width spaces."""
    return page.locator("body").inner_text().replace("\u200b", "")


def wait_for_text(page, pattern: str, timeout_ms: int = UI_TIMEOUT_MS) -> re.Match:
    """Poll the rendered page text until ``pattern`` matches; fail with the text seen."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        seen = visible_text(page)
        match = re.search(pattern, seen, re.DOTALL)
        if match:
            return match
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not on {page.url} after {timeout_ms} ms:\n{seen}")
        page.wait_for_timeout(500)


def dismiss_welcome(page) -> bool:
    """Close "Join the Dagster community" if it is open.

    The locator handler installed by the test clicks it away before Playwright *actions*, but
    the catalog is scrolled with the mouse wheel, which is not an action: with the dialog up
    the wheel scrolled nothing and the catalog showed only its first screen of assets (seen:
    "catalog showed 18 of 26 assets", depending on when the dialog appeared).
    """
    skip = page.get_by_role("button", name="Skip", exact=True)
    if not skip.is_visible():
        return False
    # an action runs the test's locator handler, which clicks Skip (clicking Skip here as well
    # would wait for a button the handler already removed)
    page.locator("body").hover()
    skip.wait_for(state="hidden")
    page.mouse.move(VIEWPORT["width"] // 2, VIEWPORT["height"] // 2)
    return True


def catalog_asset_keys(page) -> set[str]:
    """Asset keys linked from the (virtualized) catalog table, scrolling until no new rows."""
    page.locator("a[href^='/assets/']").first.wait_for()
    page.wait_for_timeout(1000)  # the welcome dialog, when there is one, opens after the page
    dismiss_welcome(page)
    page.mouse.move(VIEWPORT["width"] // 2, VIEWPORT["height"] // 2)
    seen: set[str] = set()
    for _ in range(100):
        dismissed = dismiss_welcome(page)  # it may have swallowed the last wheel
        hrefs = page.locator("a[href^='/assets/']").evaluate_all(
            "els => els.map(e => e.getAttribute('href'))"
        )
        new = {h.split("?")[0].removeprefix("/assets/") for h in hrefs} - seen
        if not new and seen and not dismissed:
            break
        seen |= new
        page.mouse.wheel(0, 500)
        page.wait_for_timeout(300)
    return seen


def check_catalog_and_graph(page, base: str, expected: set[str], shot: Shot) -> None:
    """Every asset of the Definitions is in the catalog; capture the expanded lineage graph."""
    page.goto(f"{base}/assets")
    seen = catalog_asset_keys(page)
    page.mouse.wheel(0, -10_000)
    page.wait_for_timeout(500)
    shot("01_asset_catalog")
    assert seen == expected, (
        f"catalog shows {sorted(seen)}; missing {sorted(expected - seen)}, "
        f"unexpected {sorted(seen - expected)}"
    )
    graph_screenshot(page, shot, "02_asset_graph", expand=True)


def graph_screenshot(page, shot: Shot, name: str, *, expand: bool = False) -> None:
    """Open the global lineage graph (optionally expanding every group) and capture it."""
    from playwright.sync_api import expect

    nav(page, "Lineage").click()
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    zoom_out = page.locator("button:has([aria-label='zoom_out'])")
    expect(zoom_out).to_be_visible()
    if expand:  # graph settings (gear) > Expand all groups; remembered by the browser
        page.locator("button:has([aria-label='settings'])").last.click()
        page.get_by_role("menuitem", name="Expand all groups").click()
    page.reload()  # a fresh load fits the (expanded) graph the same way every time
    expect(zoom_out).to_be_visible()
    expect(page.locator("text=raw_images").first).to_be_visible()
    tree = page.get_by_placeholder("Jump to…")
    if tree.is_visible():  # give the canvas the room of the asset tree
        toggle = page.locator("button:has([aria-label='panel_show_right'])")
        toggle.filter(has_not_text="navigation").last.click()
        expect(tree).to_be_hidden()
    zoom_out.click()  # one step: every node fits, labels stay legible
    page.wait_for_timeout(1500)  # let the layout settle before the screenshot
    shot(name)


def pick_partition(page, launch, key: str, attempts: int = 5) -> None:
    """Select ``key`` in the launch dialog's partition picker.

    The dialog re-renders (closing the picker) when its partition status finishes loading,
    which can race with the first click on a busy machine: retry until the dialog counts it.
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    picker = page.get_by_placeholder("Filter partitions")
    for attempt in range(attempts):
        try:
            if not picker.is_visible():
                launch.get_by_text("Select a partition or create one").click(timeout=10_000)
            expect(picker).to_be_visible(timeout=10_000)
            page.get_by_text(key, exact=True).filter(visible=True).first.click(timeout=10_000)
            launch.get_by_text("Launch runs to materialize").click()  # closes the picker
            expect(picker).to_be_hidden(timeout=10_000)
            expect(launch).to_contain_text("1 partition", timeout=10_000)
            page.wait_for_timeout(500)  # the picker fades out
            return
        except (AssertionError, PlaywrightError):
            if attempt == attempts - 1:
                raise
            page.wait_for_timeout(1000)


def launch_shard_run(page, shot: Shot) -> str:
    """Materialize ``per_shard_job`` for the shard from the job page; return the run id."""
    from playwright.sync_api import expect

    nav(page, "Jobs").click()
    page.locator(f"a[href$='/jobs/{JOB}']").first.click()
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    # The UI warns that safety_classifiers (upstream of scoring) was never materialized;
    # scoring keeps every image until a classifier exists, so confirm.
    launch = page.get_by_role("dialog").filter(has_text="Partition selection")
    confirm = page.get_by_role("button", name=re.compile(r"(^|\s)Confirm$"))
    expect(launch.or_(confirm).first).to_be_visible()
    if confirm.is_visible():
        confirm.click()
    expect(launch).to_be_visible()
    pick_partition(page, launch, SHARD)
    button = launch.get_by_role("button", name="Launch 1 run")
    expect(button).to_be_enabled()
    shot("03_launch_dialog")
    button.click()
    # The toast "Launched run <id>" links to the run.
    page.locator("a[href^='/runs/']", has_text="View").first.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    return page.url.split("?")[0].rsplit("/", 1)[-1]


def wait_for_run_success(page, run_id: str, shot: Shot) -> None:
    """Wait on the run page for the status tag to say Success (fail fast on Failure)."""
    from playwright.sync_api import expect

    expect(page.get_by_text(f"partition: {SHARD}")).to_be_visible()
    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(status).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shot("04_run_success")
    assert status.inner_text() == "Success", f"run {run_id}: {status.inner_text()}"


def check_asset_page(page, asset: str, check: str, rows: int, shot: Shot, prefix: str) -> str:
    """Open ``asset`` from the catalog: row count, metadata, and the check ``check`` passed."""
    nav(page, "Catalog").click()
    page.locator(".CodeMirror").first.click()  # the catalog's asset selection box
    page.keyboard.type(f'key:"{asset}"')
    page.keyboard.press("Enter")
    page.locator(f"a[href='/assets/{asset}']").first.click()
    page.wait_for_url(re.compile(rf"/assets/{asset}(\?|$)"))
    wait_for_text(page, rf"Latest materialization\s.*?\s{SHARD}\s")
    wait_for_text(page, rf"Row count\s+{rows}\s")
    metadata = wait_for_text(page, r"\nMetadata\n.*?Key\s+Timestamp\s+Value\s+(.*?)\nLineage\n")
    shot(f"{prefix}_{asset}")
    page.get_by_text("Metadata", exact=True).first.evaluate("e => e.scrollIntoView()")
    shot(f"{prefix}_{asset}_metadata")
    page.get_by_role("tab", name="Checks", exact=True).click()
    name = re.escape(check).replace("_", "_\u200b?")  # the UI may break names with U+200B
    page.get_by_text(re.compile(rf"^{name}$")).first.click()
    wait_for_text(page, rf"\n{check}\nSucceeded\n")
    wait_for_text(page, r"Latest execution\s+Evaluation result\s+Passed\s")
    shot(f"{prefix}_{asset}_check")
    return metadata.group(1)


def check_runs(port: int, run_id: str) -> None:
    """GraphQL cross-check: the UI's run succeeded and shard_sensor launched no run of its own.

    (``curation_automation`` may request follow-up runs, e.g. centroids once filtered images
    exist; those are not this test's concern.)
    """
    all_runs = runs(port)
    status = {r["runId"]: r["status"] for r in all_runs}
    assert status.get(run_id) == "SUCCESS", f"run {run_id}: {status}"
    by_sensor = [
        r["runId"]
        for r in all_runs
        for t in r["tags"]
        if t["key"] == "dagster/sensor_name" and t["value"] == "shard_sensor"
    ]
    assert not by_sensor, f"shard_sensor launched runs for a registered shard: {by_sensor}"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dagster_ui_in_chromium(tmp_path):
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    shots = artifacts_dir(tmp_path)
    print(f"\nscreenshots: {shots}")  # noqa: T201
    home = tmp_path / "home"
    dagster_home = prepare_home(home)
    write_shard(home / "sources" / SHARD, N_IMAGES)
    register_partitions(dagster_home, "shards", [SHARD])
    expected = expected_asset_keys(home)
    marker = str(tmp_path)
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    try:
        with (
            dagster_dev(home, shots / "dagster-dev.log") as dev,
            sync_playwright() as pw,
        ):
            timings["dagster dev ready"] = time.monotonic() - t0
            context = pw.chromium.launch_persistent_context(
                user_data_dir=str(tmp_path / "chromium-profile"),
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                env={**os.environ, "CURATION_BROWSER_TEST": marker},
                viewport=VIEWPORT,
            )
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            # First visit to a fresh instance: "Join the Dagster community" with a Skip button.
            page.add_locator_handler(
                page.get_by_role("button", name="Skip", exact=True),
                lambda skip: skip.click(),
            )

            def shot(name: str, **kw) -> None:
                page.screenshot(path=str(shots / f"{name}.png"), **kw)

            try:
                check_catalog_and_graph(page, dev.url, expected, shot)
                run_id = launch_shard_run(page, shot)
                t_run = time.monotonic()
                wait_for_run_success(page, run_id, shot)
                timings["run (launch to Success)"] = time.monotonic() - t_run
                check_runs(dev.port, run_id)
                metadata = check_asset_page(
                    page, "raw_images", "every_input_accounted_for", N_IMAGES, shot, "05"
                )
                assert re.search(rf"enumerated\s.*?\s{N_IMAGES}\s", metadata, re.DOTALL), metadata
                assert re.search(r"quarantined\s.*?\s0\s", metadata, re.DOTALL), metadata
                check_asset_page(page, "image_embeddings", "dims_and_norms", N_IMAGES, shot, "06")
                graph_screenshot(page, shot, "07_asset_graph_after_run")
            except BaseException as exc:
                try:
                    shot("failure", full_page=True)
                finally:
                    exc.add_note(f"screenshots and dagster-dev.log: {shots}")
                    exc.add_note(f"dagster dev log (tail):\n{dev.log_tail()}")
                raise
            finally:
                context.close()
    finally:
        timings["total"] = time.monotonic() - t0
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))  # noqa: T201
        print(f"screenshots: {shots}")  # noqa: T201
        assert_no_strays(marker)
        left = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        left = [p for p in left if p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"child processes left: {[(p.pid, p.name()) for p in left]}"
