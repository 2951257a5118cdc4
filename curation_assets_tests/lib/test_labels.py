import base64
import hashlib
import io
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from curation_assets.lib.classify.labels import (
    LABELS,
    LabelFileError,
    LabelImportError,
    current_labels,
    export_queue_csv,
    export_queue_html,
    export_queue_label_studio,
    import_labels,
    label_studio_config,
    parse_label_studio,
    parse_labels_csv,
    read_label_file,
    read_source_bytes,
    validate_labels,
)
from curation_assets_tests.conftest import image_bytes

CATS = {"hat", "gore"}
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def corpus(tmp_path) -> tuple[pl.DataFrame, list[str], str]:
    """4 image files in a folder shard and 2 in a tar shard; returns (known, ids, tar path)."""
    folder = tmp_path / "src" / "shard-a"
    folder.mkdir(parents=True)
    rows = []
    for i in range(4):
        p = folder / f"img{i}.jpg"
        data = image_bytes(i)
        p.write_bytes(data)
        rows.append((hashlib.sha256(data).hexdigest(), str(p)))
    tar_path = tmp_path / "src" / "shard-b.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in (10, 11):
            data = image_bytes(i, size=(300, 200))
            info = tarfile.TarInfo(f"sample{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            rows.append((hashlib.sha256(data).hexdigest(), f"{tar_path}#sample{i}.jpg"))
    known = pl.DataFrame(rows, schema=["image_id", "source_uri"], orient="row")
    return known, [r[0] for r in rows], str(tar_path)


def existing_labels(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(i, c, lab, "csv:old.csv", T0) for i, c, lab in rows],
        schema=LABELS.schema,
        orient="row",
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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


def test_csv_tar_member_and_single_category(tmp_path, corpus):
    known, ids, tar_path = corpus
    f = write_csv(tmp_path / "h.csv", f"source_uri,label\n{tar_path}#sample10.jpg,yes\n")
    parsed = parse_labels_csv(f, category="hat")
    rows = import_labels(parsed, known_images=known, categories=CATS, existing=LABELS.empty()).rows
    assert rows.select("image_id", "category", "label").row(0) == (ids[4], "hat", 1)


def test_csv_missing_columns_is_a_file_error(tmp_path):
    f = write_csv(tmp_path / "bad.csv", "image,cat\nx,hat\n")
    with pytest.raises(LabelFileError, match="'category' column") as err:
        parse_labels_csv(f)
    assert "'label' column" in str(err.value)
    with pytest.raises(LabelFileError, match=".txt"):
        read_label_file(tmp_path / "labels.txt")


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


# --------------------------------------------------------------------------- Label Studio


def ls_task(data: dict, *annotations: list[str], cancelled: bool = False, from_name="categories"):
    return {
        "id": 7,
        "data": data,
        "annotations": [
            {
                "id": k + 1,
                "was_cancelled": cancelled,
                "updated_at": "2025-03-04T05:06:07.123Z",
                "result": [
                    {
                        "from_name": from_name,
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": ch},
                    }
                ],
            }
            for k, ch in enumerate(annotations)
        ],
    }


def test_label_studio_export_parsing(tmp_path, corpus):
    known, ids, tar_path = corpus
    tasks = [
        # queued for hat, annotator ticked gore only -> gore 1, hat 0 (implied)
        ls_task({"image_id": ids[0], "category": "hat", "image": "x"}, ["gore"]),
        # explicit category:label choices, image given only as a local-files URL
        ls_task(
            {"image": "/data/local-files/?d=" + known["source_uri"][1].lstrip("/")},
            ["hat:yes", "gore:no"],
        ),
        # per-category Choices block with yes/no words
        ls_task({"source_uri": f"{tar_path}#sample11.jpg"}, ["no"], from_name="hat"),
        # cancelled annotations and unannotated tasks give nothing
        ls_task({"image_id": ids[2], "category": "hat"}, ["hat"], cancelled=True),
        {"data": {"image_id": ids[3]}},
    ]
    f = tmp_path / "export.json"
    f.write_text(json.dumps(tasks))
    parsed = parse_label_studio(f)
    assert parsed["labeled_at"].drop_nulls().len() == parsed.height
    rows = import_labels(parsed, known_images=known, categories=CATS, existing=LABELS.empty()).rows
    got = {(r["image_id"], r["category"], r["label"]) for r in rows.to_dicts()}
    assert got == {
        (ids[0], "gore", 1),
        (ids[0], "hat", 0),
        (ids[1], "hat", 1),
        (ids[1], "gore", 0),
        (ids[5], "hat", 0),
    }
    assert rows["source"].unique().to_list() == ["label_studio:export.json"]
    assert rows["labeled_at"][0] == datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def test_label_studio_disagreeing_annotators_are_a_contradiction(tmp_path, corpus):
    known, ids, _ = corpus
    f = tmp_path / "e.json"
    f.write_text(json.dumps([ls_task({"image_id": ids[0], "category": "hat"}, ["hat"], [])]))
    with pytest.raises(LabelImportError, match="contradiction_in_file") as err:
        import_labels(
            parse_label_studio(f), known_images=known, categories=CATS, existing=LABELS.empty()
        )
    assert "task 7 annotation 1" in str(err.value) and "task 7 annotation 2" in str(err.value)


def test_label_studio_not_a_task_list(tmp_path):
    f = tmp_path / "min.json"
    f.write_text(json.dumps([{"image": "x", "choice": "hat"}]))
    with pytest.raises(LabelFileError, match="JSON-MIN"):
        parse_label_studio(f)


def test_label_studio_config_is_xml_with_one_choice_per_category():
    xml = label_studio_config(["hat", "gore"])
    root = ET.fromstring(xml)
    assert [c.get("value") for c in root.iter("Choice")] == ["hat", "gore"]
    choices = next(root.iter("Choices"))
    assert choices.get("name") == "categories" and choices.get("choice") == "multiple"


# --------------------------------------------------------------------------- queue export


def queue_frame(known: pl.DataFrame) -> pl.DataFrame:
    n = known.height
    return known.with_columns(
        rank=pl.int_range(1, n + 1, dtype=pl.Int32),
        category=pl.lit("hat"),
        reason=pl.lit("uncertain_near_threshold"),
        score=pl.Series([0.1 * i for i in range(n)], dtype=pl.Float32),
        threshold=pl.lit(0.25, dtype=pl.Float32),
    )


def test_queue_csv_round_trips_through_import(tmp_path, corpus):
    known, ids, _ = corpus
    path = export_queue_csv(queue_frame(known), tmp_path / "queue.csv")
    text = path.read_text().splitlines()
    assert text[0].startswith("image_id,category,label,rank,reason,score")
    text[1] = text[1].replace(",hat,,", ",hat,1,", 1)
    text[2] = text[2].replace(",hat,,", ",hat,0,", 1)
    path.write_text("\n".join(text) + "\n")
    result = import_labels(
        parse_labels_csv(path), known_images=known, categories=CATS, existing=LABELS.empty()
    )
    assert result.rows["label"].to_list() == [1, 0] and result.n_blank == known.height - 2


def test_queue_label_studio_tasks_round_trip(tmp_path, corpus):
    known, ids, _ = corpus
    queue = queue_frame(known)
    path = export_queue_label_studio(
        queue, tmp_path / "tasks.json", "/data/local-files/?d=", predictions=True
    )
    tasks = json.loads(path.read_text())
    assert len(tasks) == known.height
    t0 = tasks[0]
    assert t0["data"]["image"].startswith("/data/local-files/?d=")
    assert t0["data"]["image_id"] == ids[0] and t0["data"]["reason"] == "uncertain_near_threshold"
    assert t0["predictions"][0]["result"] == []  # score 0.0 < threshold 0.25
    assert tasks[3]["predictions"][0]["result"][0]["value"]["choices"] == ["hat"]
    # annotate the first task (nothing ticked -> hat negative) and re-import
    tasks[0]["annotations"] = [{"id": 1, "result": []}]
    path.write_text(json.dumps(tasks))
    rows = import_labels(
        parse_label_studio(path), known_images=known, categories=CATS, existing=LABELS.empty()
    ).rows
    assert rows.select("image_id", "category", "label").rows() == [(ids[0], "hat", 0)]
    inline = export_queue_label_studio(queue.tail(1), tmp_path / "inline.json", inline_images=True)
    assert json.loads(inline.read_text())[0]["data"]["image"].startswith("data:image/jpeg;base64,")


def test_read_source_bytes_paths_and_tar_members(corpus, tmp_path):
    known, _, tar_path = corpus
    for uri, image_id in zip(known["source_uri"], known["image_id"], strict=True):
        assert hashlib.sha256(read_source_bytes(uri)).hexdigest() == image_id
    with pytest.raises(FileNotFoundError, match="no member"):
        read_source_bytes(f"{tar_path}#nope.jpg")
    with pytest.raises(FileNotFoundError):
        read_source_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="URL"):
        read_source_bytes("https://example.com/a.jpg")


def test_html_contact_sheet_has_thumbnails_for_files_and_tar_members(tmp_path, corpus):
    known, ids, _ = corpus
    queue = pl.concat(
        [
            queue_frame(known),
            queue_frame(known.head(1)).with_columns(
                image_id=pl.lit("0" * 64),
                source_uri=pl.lit(str(tmp_path / "gone.jpg")),
                rank=pl.lit(99, pl.Int32),
            ),
        ]
    )
    sheet = export_queue_html(queue, tmp_path / "sheet.html")
    doc = sheet.path.read_text()
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', doc)
    assert (sheet.n_cards, sheet.n_thumbnails, len(thumbs)) == (7, 6, 6)
    for b64 in thumbs:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert max(img.size) <= 160
    assert sheet.failed[0][0] == "0" * 64 and "image unavailable" in doc
    tar_card = doc.split(f'title="{ids[4]}">{ids[4][:12]}</div>')[1].split('class="card"')[0]
    assert "#5 · <b>hat</b> · score 0.4000" in tar_card and "uncertain_near_threshold" in tar_card
    tar_thumb = doc.split(f'title="{ids[4]}"')[0].rsplit('class="card"', 1)[1]
    assert "data:image/jpeg;base64," in tar_thumb
    assert "image_id,category,label" in doc and f"{ids[5]},hat," in doc
    assert "write 1" in doc  # labelling instructions
    assert "<script" not in doc  # self-contained, static

    by_callable = export_queue_html(
        queue.drop("source_uri").head(2),
        tmp_path / "cb.html",
        thumbnails=lambda i: image_bytes(1),
        max_items=1,
    )
    assert (by_callable.n_cards, by_callable.n_thumbnails) == (1, 1)
    with pytest.raises(ValueError, match="source_uri"):
        export_queue_html(queue.drop("source_uri"), tmp_path / "x.html")
