import base64
import io
import json
import re
import xml.etree.ElementTree as ET

import polars as pl
import pytest
from PIL import Image

from curation_assets.lib.classify.label_files import parse_label_studio, parse_labels_csv
from curation_assets.lib.classify.labels import import_labels
from curation_assets.lib.classify.queue_export import (
    export_queue_csv,
    export_queue_html,
    export_queue_label_studio,
    label_studio_config,
)
from curation_assets.lib.tables import LABELS
from curation_assets_tests.conftest import image_bytes
from curation_assets_tests.lib.classify.helpers import CATS


def test_label_studio_config_is_xml_with_one_choice_per_category():
    xml = label_studio_config(["hat", "gore"])
    root = ET.fromstring(xml)
    assert [c.get("value") for c in root.iter("Choice")] == ["hat", "gore"]
    choices = next(root.iter("Choices"))
    assert choices.get("name") == "categories" and choices.get("choice") == "multiple"


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
