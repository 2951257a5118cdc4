"""Helpers of the classify tests: label files and categories."""

from pathlib import Path

CATS = {"hat", "gore"}


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
