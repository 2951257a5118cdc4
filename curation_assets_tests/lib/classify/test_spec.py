import math
from pathlib import Path

import pytest

from curation_assets.lib.classify.spec import (
    CategorySpecError,
    ZeroShotPrompts,
    load_category_spec,
)

SHIPPED_SPEC = (
    Path(__file__).resolve().parents[3] / "curation_assets" / "configs" / "categories.yaml"
)


def test_shipped_category_spec_loads():
    specs = load_category_spec(SHIPPED_SPEC)
    assert specs and all(0 < s.target_recall <= 1 for s in specs)
    assert specs[0].zero_shot is not None and specs[0].zero_shot.positive


def test_category_spec_defaults_and_fields(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "categories:\n"
        "  - name: hat\n    description: a hat\n"
        "  - name: gore_v2\n    description: gore\n    target_recall: 1\n"
        "    min_clip_score: 0.28\n"
        "    zero_shot: {positive: [blood], negative: [a photo]}\n"
    )
    hat, gore = load_category_spec(p)
    assert hat.target_recall == 0.99 and hat.zero_shot is None and hat.min_clip_score is None
    assert gore.target_recall == 1.0 and gore.min_clip_score == 0.28
    assert gore.zero_shot == ZeroShotPrompts(("blood",), ("a photo",))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "  - name: hat\n    description: d\n    recall: 0.9\n",
            r"category 'hat': unknown keys \['recall'\]",
        ),
        ("  - name: Hat-1\n    description: d\n", "not snake_case"),
        ("  - name: hat\n    description: d\n    target_recall: 0\n", "target_recall is 0"),
        ("  - name: hat\n    description: d\n    target_recall: '0.9'\n", "target_recall"),
        ("  - name: hat\n", "description is None"),
        (
            "  - name: hat\n    description: d\n    zero_shot: {positive: []}\n",
            "zero_shot.positive",
        ),
        (
            "  - name: hat\n    description: d\n"
            "    zero_shot: {positive: [a], negative: [b], x: 1}\n",
            "under zero_shot",
        ),
        ("  - name: hat\n    description: d\n    min_clip_score: 2\n", "min_clip_score is 2"),
        ("  - {name: hat, description: d}\n  - {name: hat, description: e}\n", "more than once"),
    ],
)
def test_category_spec_errors_name_file_category_and_key(tmp_path, body, match):
    p = tmp_path / "cats.yaml"
    p.write_text("categories:\n" + body)
    with pytest.raises(CategorySpecError, match=match) as err:
        load_category_spec(p)
    assert str(p) in str(err.value)


def test_category_spec_file_level_errors(tmp_path):
    with pytest.raises(CategorySpecError, match="does not exist"):
        load_category_spec(tmp_path / "missing.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("cats: []\n")
    with pytest.raises(CategorySpecError, match="'categories:'"):
        load_category_spec(p)
    p.write_text("categories: []\nversion: 1\n")
    with pytest.raises(CategorySpecError, match="unknown top-level keys"):
        load_category_spec(p)
    assert math.isclose(0.99, load_category_spec(SHIPPED_SPEC)[0].target_recall)
