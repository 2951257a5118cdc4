from datetime import UTC, datetime

import polars as pl
import pytest

from curation_assets.lib.classify.label_files import parse_labels_csv
from curation_assets.lib.classify.labels import (
    LabelImportError,
    current_labels,
    import_labels,
    validate_labels,
)
from curation_assets.lib.tables import LABELS
from curation_assets_tests.lib.classify.helpers import CATS, write_csv

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def existing_labels(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(i, c, lab, "csv:old.csv", T0) for i, c, lab in rows],
        schema=LABELS.schema,
        orient="row",
    )


def test_csv_by_id_and_by_path_imports(tmp_path, corpus):
    known, ids, _ = corpus
    uri1 = known["source_uri"][1]
    f = write_csv(
        tmp_path / "l.csv",
        "Image_ID,path,Category,LABEL,note\n"
        f"{ids[0]},,hat,1,x\n"
        f",{uri1},hat,No,\n"  # absolute path
        ",src/shard-a/img2.jpg,gore,pos,\n"  # relative: resolved by unique suffix
        f",{tmp_path}/src/shard-a/../shard-a/img3.jpg,gore,false,\n"  # normalized
        f"{ids[0]},,gore,,\n",  # blank label: not labelled yet
    )
    parsed = parse_labels_csv(f)
    assert parsed.height == 5 and parsed["source"].unique().to_list() == ["csv:l.csv"]
    result = import_labels(
        parsed, known_images=known, categories=CATS, existing=LABELS.empty(), now=T0
    )
    rows = result.rows.sort("image_id", "category")
    assert rows.schema == LABELS.schema
    got = {(r["image_id"], r["category"], r["label"]) for r in rows.to_dicts()}
    assert got == {(ids[0], "hat", 1), (ids[1], "hat", 0), (ids[2], "gore", 1), (ids[3], "gore", 0)}
    assert result.n_blank == 1 and result.n_rows == 5
    assert result.per_category == {
        "gore": {"positive": 1, "negative": 1},
        "hat": {"positive": 1, "negative": 1},
    }


def test_every_problem_kind_is_reported_and_nothing_is_imported(tmp_path, corpus):
    known, ids, _ = corpus
    f = write_csv(
        tmp_path / "bad.csv",
        "image_id,source_uri,category,label\n"
        f"{ids[0]},,hat,1\n"  # fine on its own
        "deadbeef,,hat,1\n"  # unknown image id
        ",/nowhere/x.jpg,hat,1\n"  # unknown path
        f",img1.jpg,hat,1\n"  # bare file name: unique suffix, resolves
        f"{ids[1]},,violence,1\n"  # unknown category
        f"{ids[2]},,hat,maybe\n"  # invalid label
        f"{ids[3]},,hat,1\n{ids[3]},,hat,0\n"  # contradiction within the file
        f"{ids[4]},,gore,0\n"  # contradicts the existing label 1
        ",,hat,1\n",  # no image at all
    )
    existing = existing_labels([(ids[4], "gore", 1)])
    parsed = parse_labels_csv(f)
    with pytest.raises(LabelImportError) as err:
        import_labels(parsed, known_images=known, categories=CATS, existing=existing)
    msg = str(err.value)
    kinds = err.value.problems["kind"].value_counts().sort("kind")
    assert dict(kinds.iter_rows()) == {
        "contradiction_in_file": 2,
        "contradiction_with_existing": 1,
        "invalid_label": 1,
        "missing_image": 1,
        "unknown_category": 1,
        "unknown_image": 2,
    }
    assert "nothing was imported" in msg and "csv:bad.csv" in msg
    assert "unknown_image (2)" in msg and "line 3" in msg and "'violence'" in msg
    assert "label 1 at line 8 but label 0 at line 9" in msg
    assert "allow_relabel=True" in msg
    valid, problems = validate_labels(
        parsed, known_images=known, categories=CATS, existing=existing
    )
    assert problems.height == 8
    assert set(valid["image_id"]) == {ids[0], ids[1]}  # validate still tells which rows are fine


def test_ambiguous_suffix_is_reported(tmp_path, corpus):
    known, ids, _ = corpus
    other = known.head(1).with_columns(
        image_id=pl.lit("f" * 64), source_uri=pl.lit("/elsewhere/shard-a/img0.jpg")
    )
    f = write_csv(tmp_path / "a.csv", "path,category,label\nshard-a/img0.jpg,hat,1\n")
    with pytest.raises(LabelImportError, match="ambiguous_path"):
        import_labels(
            parse_labels_csv(f),
            known_images=pl.concat([known, other]),
            categories=CATS,
            existing=LABELS.empty(),
        )


def test_repeats_are_deduplicated_and_relabel_needs_consent(tmp_path, corpus):
    known, ids, _ = corpus
    existing = existing_labels([(ids[0], "hat", 1), (ids[1], "hat", 0)])
    f = write_csv(
        tmp_path / "r.csv",
        f"image_id,category,label\n{ids[0]},hat,1\n{ids[2]},hat,1\n{ids[2]},hat,yes\n",
    )
    result = import_labels(
        parse_labels_csv(f), known_images=known, categories=CATS, existing=existing
    )
    assert result.rows["image_id"].to_list() == [ids[2]]
    assert (result.n_repeats_in_file, result.n_already_labelled) == (1, 1)

    fix = write_csv(tmp_path / "fix.csv", f"image_id,category,label\n{ids[1]},hat,1\n")
    with pytest.raises(LabelImportError, match="contradiction_with_existing"):
        import_labels(parse_labels_csv(fix), known_images=known, categories=CATS, existing=existing)
    later = datetime(2025, 6, 1, tzinfo=UTC)
    result = import_labels(
        parse_labels_csv(fix),
        known_images=known,
        categories=CATS,
        existing=existing,
        allow_relabel=True,
        now=later,
    )
    assert result.n_relabelled == 1
    now_in_force = current_labels(pl.concat([existing, result.rows]))
    assert now_in_force.filter(pl.col("image_id") == ids[1])["label"].to_list() == [1]
    assert now_in_force.height == 2
