import json
from datetime import UTC, datetime

import pytest

from curation_assets.lib.classify.label_files import (
    LabelFileError,
    parse_label_studio,
    parse_labels_csv,
    read_label_file,
)
from curation_assets.lib.classify.labels import LabelImportError, import_labels
from curation_assets.lib.tables import LABELS
from curation_assets_tests.lib.classify.helpers import CATS, write_csv


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
