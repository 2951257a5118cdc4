import numpy as np
import polars as pl
import pytest

from curation_assets.lib.weights.audit import (
    AUDIT_COLUMNS,
    DEFAULT_KEYWORDS,
    audit_markdown,
    bias_audit,
    concept_attributes,
    flag_shifts,
    keyword_attributes,
    metadata_attributes,
    share_bar,
)
from curation_assets.lib.weights.fit import fit_density_ratio
from curation_assets.lib.weights.scale import sample_weights


def _kw(captions, keywords=DEFAULT_KEYWORDS):
    df = pl.DataFrame({"image_id": [str(i) for i in range(len(captions))], "caption": captions})
    return keyword_attributes(df, keywords)


def test_man_matches_whole_words_only():
    captions = [
        "a man walking",
        "A WOMAN walking",
        "fresh mango slices",
        "Men at work",
        "the man's hat",
        "human rights",
        "MAN.",
        "manhattan skyline",
        None,
        "   ",
    ]
    got = _kw(captions)["keyword:man"].to_list()
    assert got == [True, False, False, True, True, False, True, False, None, None]


def test_woman_does_not_count_women_unless_listed():
    captions = ["two women", "a woman", "womanhood", "a Woman's bag"]
    assert _kw(captions, ["woman"])["keyword:woman"].to_list() == [False, True, False, True]
    # The default group lists both forms.
    assert _kw(captions)["keyword:woman"].to_list() == [True, True, False, True]
    # A caption with both forms counts once, as one group.
    assert _kw(["a woman and two women"])["keyword:woman"].to_list() == [True]


def test_keywords_with_punctuation_and_spaces_are_literal():
    df = _kw(
        ["a t-shirt", "a tshirt", "ice  cream cone", "icecream", "c++ code", "c code"],
        {"t-shirt": ["t-shirt"], "ice cream": ["ice cream"], "cpp": ["c++"]},
    )
    assert df["keyword:t-shirt"].to_list() == [True, False, False, False, False, False]
    assert df["keyword:ice cream"].to_list() == [False, False, True, False, False, False]
    # "c++" ends in a non-word character, so \b after it needs a word character next: it
    # does not match before a space. Whole-word matching is meant for words.
    assert df["keyword:cpp"].to_list() == [False] * 6


def test_metadata_attributes():
    images = pl.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "width": [800, 300, 1024, None],
            "height": [600, 900, 1000, 50],
            "format": ["JPEG", "PNG", "JPEG", None],
            "caption": ["x", None, "  ", "y"],
        },
        schema_overrides={"width": pl.Int32, "height": pl.Int32},
    )
    df = metadata_attributes(images)
    assert df.columns == ["image_id", "orientation", "size", "has_caption", "format"]
    assert df["orientation"].to_list() == ["landscape", "portrait", "square", None]
    assert df["size"].to_list() == ["512-1023", "256-511", "512-1023", None]
    assert df["has_caption"].to_list() == ["yes", "no", "no", "yes"]


def _hand_frames():
    # 10 unfiltered images, 4 kept (b, d, f, h) with weights 2, 1, 0.5, 0.5.
    ids = list("abcdefghij")
    attributes = pl.DataFrame(
        {
            "image_id": ids,
            "format": ["JPEG"] * 6 + ["PNG"] * 3 + [None],
            "keyword:woman": [True, True, False, False, True, None, True, False, False, True],
        }
    )
    weights = pl.DataFrame({"image_id": ["b", "d", "f", "h"], "weight": [2.0, 1.0, 0.5, 0.5]})
    return attributes, weights


def test_bias_audit_shares_on_a_hand_built_frame():
    attributes, weights = _hand_frames()
    audit = bias_audit(attributes, weights)
    assert audit.columns == list(AUDIT_COLUMNS)
    rows = {(r["attribute"], r["value"]): r for r in audit.iter_rows(named=True)}
    jpeg = rows[("format", "JPEG")]
    # JPEG: a-f; kept b, d, f (weights 2, 1, 0.5 of 4).
    assert jpeg["share_unfiltered"] == pytest.approx(0.6)
    assert jpeg["share_filtered"] == pytest.approx(0.75)
    assert jpeg["share_weighted"] == pytest.approx(3.5 / 4)
    assert jpeg["shift_filtered_pts"] == pytest.approx(15.0)
    assert jpeg["shift_weighted_pts"] == pytest.approx(27.5)
    assert (jpeg["n_unfiltered"], jpeg["n_filtered"]) == (6, 3)
    png = rows[("format", "PNG")]
    assert png["share_weighted"] == pytest.approx(0.5 / 4) and png["n_filtered"] == 1
    missing = rows[("format", "(missing)")]
    assert missing["share_unfiltered"] == pytest.approx(0.1) and missing["n_filtered"] == 0
    # keyword:woman -> attribute "keyword", value "woman"; f (kept) has no caption (null).
    woman = rows[("keyword", "woman")]
    assert woman["share_unfiltered"] == pytest.approx(5 / 9)
    assert woman["share_filtered"] == pytest.approx(1 / 3)  # b of b, d, h
    assert woman["share_weighted"] == pytest.approx(2.0 / 3.5)
    assert (woman["n_unfiltered"], woman["n_filtered"]) == (5, 1)
    # Shares of one categorical attribute sum to 1 in every set.
    fmt = audit.filter(pl.col("attribute") == "format")
    for c in ("share_unfiltered", "share_filtered", "share_weighted"):
        assert fmt[c].sum() == pytest.approx(1.0)


def test_bias_audit_rejects_weights_of_unknown_images():
    attributes, weights = _hand_frames()
    stray = pl.concat([weights, pl.DataFrame({"image_id": ["zz"], "weight": [1.0]})])
    with pytest.raises(ValueError, match="not among the 10 unfiltered"):
        bias_audit(attributes, stray)
    with pytest.raises(ValueError, match="duplicate"):
        bias_audit(attributes, pl.concat([weights, weights]))


def test_flag_shifts_uses_distance_and_support():
    audit = pl.DataFrame(
        {
            "attribute": ["a", "a", "b", "c"],
            "value": ["x", "y", "z", "w"],
            "share_unfiltered": [0.30, 0.70, 0.05, 0.10],
            "share_filtered": [0.20, 0.80, 0.0, 0.05],
            "share_weighted": [0.29, 0.71, 0.0, 0.06],
            "shift_filtered_pts": [-10.0, 10.0, -5.0, -5.0],
            "shift_weighted_pts": [-1.0, 1.0, -5.0, -4.0],
            "n_unfiltered": [3000, 7000, 200, 40],
            "n_filtered": [2000, 8000, 0, 5],
        }
    )
    flagged = flag_shifts(audit, max_shift_pts=2.0, min_support=100)
    # a/x, a/y fixed by the weights; c/w too small to judge; b/z removed entirely: flagged.
    assert flagged.select("attribute", "value").rows() == [("b", "z")]
    loose = flag_shifts(audit, max_shift_pts=2.0, min_support=10)
    assert loose["value"].to_list() == ["z", "w"]  # largest |shift| first
    assert loose["weights_helped"].to_list() == [False, True]
    assert flag_shifts(audit, max_shift_pts=0.5, min_support=100).height == 3


def test_audit_markdown_renders_bars_flags_and_truncation():
    attributes, weights = _hand_frames()
    audit = bias_audit(attributes, weights)
    flagged = flag_shifts(audit, max_shift_pts=5.0, min_support=1)
    md = audit_markdown(audit, flagged=flagged, max_rows=3)
    lines = md.splitlines()
    assert lines[0].startswith("| attribute | value | unfiltered |")
    assert len([ln for ln in lines if ln.startswith("| ") and "---" not in ln]) == 4  # + header
    assert "█" in md and "⚠" in md
    assert "more rows not shown" in md
    # Most-shifted first: "woman" lost 22 points to the filter, JPEG gained 15.
    assert lines[2].startswith("| keyword | woman |")  # the weights fixed it: +1.6 pts
    assert lines[3].startswith("| format | JPEG ⚠")
    assert share_bar(0.5, 1.0, 10) == "█████"
    assert share_bar(0.375, 1.0, 1) == "▍"  # three eighths of a cell
    assert share_bar(None, 1.0, 10) == ""
    piped = audit.with_columns(pl.lit("a|b").alias("value"))
    assert "a\\|b" in audit_markdown(piped)


def _fake_encoder():
    basis = {"a photo.": 0, "a photo of a woman.": 1, "a photo of a dog.": 2}

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 4), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, basis[t]] = 1.0
        return out

    return encode


def test_concept_attributes_compare_with_the_baseline_prompt():
    x = np.array(
        [[0.2, 0.9, 0.1, 0.0], [0.9, 0.2, 0.1, 0.0], [0.1, 0.1, 0.9, 0.0], [0.5, 0.5, 0.6, 0.0]],
        dtype=np.float32,
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    df = concept_attributes(
        x,
        ["p", "q", "r", "s"],
        {"woman": "a photo of a woman.", "dog": ["a photo of a dog."]},
        _fake_encoder(),
        batch_size=3,
    )
    assert df["concept:woman"].to_list() == [True, False, False, False]
    assert df["concept:dog"].to_list() == [False, False, True, True]
    with pytest.raises(ValueError, match="own text tower"):
        concept_attributes(
            x[:, :3], ["p", "q", "r", "s"], {"dog": "a photo of a dog."}, _fake_encoder()
        )


def test_weighted_shares_recover_unfiltered_shares_end_to_end():
    # A filter that removes one group more than the other; attributes as the pipeline builds
    # them; weights from the density-ratio probe. The audit shows the shift and its repair.
    rng = np.random.default_rng(7)
    n, d = 12_000, 8
    group = rng.random(n) < 0.5
    x = rng.normal(size=(n, d)) + np.where(group[:, None], 1.0, -1.0) * np.eye(d)[0]
    p_kept = 1 / (1 + np.exp(-(1.0 - 1.2 * x[:, 0])))
    kept = rng.random(n) < p_kept
    ids = [f"{i:05d}" for i in range(n)]
    captions = np.where(group, "a woman outdoors", "a man outdoors").tolist()
    images = pl.DataFrame({"image_id": ids, "caption": captions})
    attributes = keyword_attributes(images, {"woman": ["woman"], "man": ["man"]}).join(
        pl.DataFrame({"image_id": ids, "group": np.where(group, "g1", "g0")}), on="image_id"
    )
    sw = sample_weights(fit_density_ratio(x.astype(np.float32), kept, seed=0), x, kept)
    weights = sw.frame([ids[i] for i in sw.rows], ["s"] * len(sw.rows))
    audit = bias_audit(attributes, weights)
    woman = audit.filter((pl.col("attribute") == "keyword") & (pl.col("value") == "woman"))
    assert woman["shift_filtered_pts"][0] < -10
    assert abs(woman["shift_weighted_pts"][0]) < 2
    assert flag_shifts(audit, max_shift_pts=2.0, min_support=100).height == 0
    assert (
        flag_shifts(
            audit.with_columns(pl.col("shift_filtered_pts").alias("shift_weighted_pts")),
            max_shift_pts=2.0,
        ).height
        == 4
    )
