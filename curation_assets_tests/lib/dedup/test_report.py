"""What the dedup assets report: figures, the four checks, the recall chart, group thumbnails."""

import io
from dataclasses import replace

import polars as pl
import pytest
from PIL import Image

from curation_assets.lib.dedup import (
    dedup_checks,
    dedup_figures,
    duplicate_groups_markdown,
    found_by_counts,
    pick_groups,
    recall_chart,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import N_CLUSTERINGS
from curation_assets_tests.lib.dedup.helpers import (
    add_shard,
    run_and_write,
    vectors,
    write_centroids,
)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    store = DeltaStore(str(tmp_path_factory.mktemp("report") / "delta"))
    write_centroids(store)
    add_shard(store, "a", vectors(40, 6, seed=1))
    add_shard(store, "b", vectors(3, 0, seed=2), start=100, assign_rows=False)  # waits
    return run_and_write(store)


def _checks(outcome, target: float = 0.95) -> dict[str, tuple[bool, bool, str, dict]]:
    return {c.name: (c.passed, c.warn, c.asset, c.metadata) for c in dedup_checks(outcome, target)}


def test_a_clean_run_passes_every_check_but_lists_the_waiting_images(outcome):
    checks = _checks(outcome)
    assert checks["one_kept_per_group"] == (
        True,
        False,
        "deduplicated_images",
        {"bad_groups": 0, "bad_pointers": 0},
    )
    assert checks["no_pair_below_tau"] == (
        True,
        False,
        "duplicate_pairs",
        {"below_tau": 0, "tau": 0.95},
    )
    passed, warn, _, meta = checks["every_filtered_image_deduplicated"]
    assert (passed, warn) == (False, True)
    assert meta == {"pending_shards": 1, "pending": {"b": "3 images lack cluster_assignments_0"}}
    passed, warn, _, meta = checks["pair_recall_target"]
    assert passed and warn and meta["target"] == 0.95 and meta["true_pairs"] == 6


def test_broken_groups_pairs_below_tau_and_low_recall_fail(outcome):
    members = outcome.members.with_columns(
        kept=pl.when(pl.col("kept").not_()).then(True).otherwise(pl.col("kept"))
    )
    pairs = outcome.pairs.with_columns(similarity=pl.col("similarity") * 0.5)
    recall = {**outcome.recall, "recall": [0.5] * N_CLUSTERINGS}
    merged = replace(outcome.merged, members=members, pairs=pairs)
    checks = _checks(replace(outcome, merged=merged, recall=recall))
    assert checks["one_kept_per_group"][0] is False
    assert checks["one_kept_per_group"][3]["bad_groups"] == 6
    assert checks["no_pair_below_tau"][0] is False
    assert checks["no_pair_below_tau"][3]["below_tau"] == outcome.pairs.height
    assert checks["pair_recall_target"][:2] == (False, True)
    assert checks["pair_recall_target"][3]["recall"] == 0.5
    none = replace(outcome, recall={**outcome.recall, "recall": []})
    assert _checks(none)["pair_recall_target"][3]["recall"] == "n/a"


def test_figures_chart_and_found_by(outcome):
    figures = dedup_figures(outcome)
    assert list(figures)[:4] == ["mode", "mode_reason", "tau", "policy"]
    assert figures["mode"] == "full" and figures["policy"] == "resolution, earliest, smallest_id"
    assert (figures["kept"], figures["removed"], figures["pending_shards"]) == (34, 6, 1)
    assert figures["groups_with_duplicates"] == 6 and figures["largest_group"] == 2
    curve = [figures[f"recall_{c}_clusterings"] for c in range(1, N_CLUSTERINGS + 1)]
    assert curve == sorted(curve) and list(figures)[-1] == f"recall_{N_CLUSTERINGS}_stderr"
    assert "40 queries from all deduplicated rows" in figures["recall_measured_on"]
    chart = recall_chart(outcome)
    assert chart is not None
    title, labels, values = chart
    assert "6 true pairs" in title and "40 queries" in title
    assert labels[0] == "1 clustering(s)" and values == [round(r, 4) for r in curve]
    assert recall_chart(replace(outcome, recall={"recall": []})) is None
    counts = found_by_counts(outcome)
    assert sum(counts.values()) == outcome.pairs.height and "1 clustering(s)" in counts


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 20), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_groups_shown_borderline_first_then_largest_and_unreadable_images_say_so():
    images = pl.DataFrame(
        {
            "image_id": ["k1", "r1", "k2", "r2", "r3", "k3", "r4", "solo"],
            "kept": [True, False, True, False, False, True, False, True],
            "similarity": [None, 0.90, None, 0.99, 0.98, None, 0.97, None],
            "component_id": ["k1", "k1", "k2", "k2", "k2", "k3", "k3", "solo"],
            "component_size": [2, 2, 3, 3, 3, 2, 2, 1],
        }
    )
    assert pick_groups(images, 2) == ["k1", "k2"]  # most borderline, then largest
    assert pick_groups(images, 3) == ["k1", "k3", "k2"]
    assert pick_groups(images.filter(pl.col("component_size") == 1)) == []
    uris = images.select("image_id", source_uri=pl.col("image_id"))

    def read(uri: str) -> bytes:
        if uri == "r1":
            raise FileNotFoundError(uri)
        return _jpeg()

    md = duplicate_groups_markdown(images, uris, read, n_groups=1)
    assert md.startswith("**2 images** (kept `k1`)")
    assert md.count("data:image/jpeg;base64,") == 1 and "unreadable: FileNotFoundError" in md
    assert "| kept | 0.900 |" in md
    assert duplicate_groups_markdown(images.head(0), uris, read) == "_no near-duplicate groups_"
