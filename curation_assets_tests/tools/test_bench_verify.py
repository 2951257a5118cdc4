import json

import numpy as np
import pytest
from PIL import Image

from curation_assets.cli import build_parser, main
from curation_assets.tools.bench_verify import (
    EDITS,
    _equal_precision,
    _score,
    bench_verify,
    watermark,
)


def test_watermark_keeps_the_size_and_marks_the_image():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    marked = watermark(img, np.random.default_rng(1))
    assert marked.size == img.size and marked.mode == "RGB"
    changed = (np.asarray(marked) != np.asarray(img)).any(axis=2).mean()
    assert 0.01 < changed < 0.5  # a mark, not a new image
    again = watermark(img, np.random.default_rng(1))
    np.testing.assert_array_equal(np.asarray(marked), np.asarray(again))
    assert EDITS[-1] == "watermark"


def test_scores_and_the_plain_threshold_at_equal_precision():
    sim = np.array([0.99, 0.95, 0.90, 0.88, 0.86, 0.84, 0.82])
    truth = np.array([True, True, True, False, True, True, False])
    s = _score(sim >= 0.9, truth, positives=6)
    assert s == {
        "pairs": 3,
        "true_pairs": 3,
        "false_pairs": 0,
        "precision": 1.0,
        "recall": 0.5,
    }
    # precision 1.0 holds down to 0.89 (the 0.88 pair is false): best recall 3/6
    best = _equal_precision(sim, truth, 6, 1.0, 0.81)
    assert best["recall"] == 0.5 and best["precision"] == 1.0 and 0.88 < best["tau"] <= 0.9
    # precision ≥ 0.8 admits 0.84 (4 true of 5)
    best = _equal_precision(sim, truth, 6, 0.8, 0.81)
    assert best["recall"] == round(5 / 6, 4) and best["tau"] <= 0.84


def test_bench_verify_cli_parses_and_missing_dataset_is_a_clear_error(tmp_path, capsys):
    args = build_parser().parse_args(["bench", "verify", "--photos", "5", "--no-calibration"])
    assert args.photos == 5 and args.no_calibration is True and args.split == "test"
    assert main(["bench", "verify", "--clothing", str(tmp_path / "absent")]) == 2
    assert "clothing-small" in capsys.readouterr().err
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="held-out"):
        bench_verify(tmp_path, split="train")  # calibrating on the reported split


@pytest.mark.integration
def test_bench_verify_on_a_few_real_photos(clothing_dir):
    out = bench_verify(clothing_dir, photos=6, calibrate_photos=4)
    json.dumps(out)
    assert out["images"] == 6 * (len(EDITS) + 1) and out["split"] == "test"
    assert out["planted_pairs"] == 6 * 28 and out["verify_errors"] == 0
    s = out["scores"]
    assert s["tau_min"]["recall"] >= s["tau_plus_verified_band"]["recall"] >= s["tau"]["recall"]
    assert s["tau_min"]["pairs"] == out["pairs_at_tau_min"]
    # on real photos every edited copy that is a candidate verifies (the module's thresholds)
    assert s["verified_all"]["recall"] >= 0.9 * s["tau_min"]["recall"]
    assert set(out["per_edit"]) == set(EDITS)
    cal = out["calibration"]
    assert cal["split"] == "train" and cal["photos"] == 4 and len(cal["sweep"]) > 1
    assert out["verify_ms_per_pair"] > 0 and out["sgemm_gflops"] > 0
