"""The category spec: which unwanted categories to classify, read from a YAML file.

A category spec (``configs/categories.yaml``) lists the categories the classify stage builds a
classifier for and the filter stage removes: a snake_case ``name``, a ``description`` for
labellers, the ``target_recall`` its threshold must keep, optional ``zero_shot`` prompts (used
while labels are scarce) and an optional ``min_clip_score`` (an image–caption cosine floor).
:func:`load_category_spec` validates the whole file and raises :class:`CategorySpecError`
naming the file, the category and the key at fault, with the fix.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from curation_assets.lib.errors import ConfigError

DEFAULT_TARGET_RECALL = 0.99
CATEGORY_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
"""snake_case: lowercase letters and digits, words joined by single underscores."""


class CategorySpecError(ConfigError):
    """The category spec file is invalid (bad configuration)."""


@dataclass(frozen=True)
class ZeroShotPrompts:
    """Prompts describing a category, embedded with the text tower.

    Attributes:
        positive: Prompts describing images of the category (averaged).
        negative: Prompts describing everything else (averaged).
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class CategorySpec:
    """One category to classify (and filter).

    Attributes:
        name: snake_case identifier; used as a score column name and in labels.
        description: What counts as positive, for labellers and the UI.
        target_recall: Out-of-fold recall the threshold must keep, in (0, 1].
        zero_shot: Optional prompts for zero-shot scoring when labels are scarce.
        min_clip_score: Optional image–caption cosine floor (LAION-style, e.g. 0.28 for
            ViT-B/32) applied by the filter stage to captioned images; see
            :func:`~curation_assets.lib.filter.clip_score_floor`.
    """

    name: str
    description: str
    target_recall: float = DEFAULT_TARGET_RECALL
    zero_shot: ZeroShotPrompts | None = None
    min_clip_score: float | None = None


_SPEC_KEYS = {"name", "description", "target_recall", "zero_shot", "min_clip_score"}
_ZERO_SHOT_KEYS = {"positive", "negative"}


def _spec_error(source: str, where: str, problem: str, fix: str) -> CategorySpecError:
    return CategorySpecError(f"{source}: {where}: {problem}; {fix}")


def _prompts(value: Any, source: str, where: str, key: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(p, str) and p.strip() for p in value)
    ):
        raise _spec_error(
            source,
            where,
            f"zero_shot.{key} is {value!r}",
            "expected a non-empty list of non-empty strings",
        )
    return tuple(p.strip() for p in value)


def _parse_category(entry: Any, index: int, source: str) -> CategorySpec:
    where = f"category #{index + 1}"
    if not isinstance(entry, dict):
        raise _spec_error(
            source, where, f"is a {type(entry).__name__}", "expected a mapping with name: ..."
        )
    name = entry.get("name")
    if isinstance(name, str):
        where = f"category {name!r}"
    unknown = sorted(set(entry) - _SPEC_KEYS)
    if unknown:
        raise _spec_error(
            source, where, f"unknown keys {unknown}", f"allowed keys are {sorted(_SPEC_KEYS)}"
        )
    if not isinstance(name, str) or not CATEGORY_NAME_PATTERN.match(name):
        raise _spec_error(
            source,
            where,
            f"name {name!r} is not snake_case",
            "use lowercase letters, digits and single underscores, starting with a letter "
            "(e.g. 'graphic_violence')",
        )
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip():
        raise _spec_error(
            source,
            where,
            f"description is {description!r}",
            "write one sentence saying what counts as positive (labellers read it)",
        )
    recall = entry.get("target_recall", DEFAULT_TARGET_RECALL)
    if (
        isinstance(recall, bool)
        or not isinstance(recall, int | float)
        or not 0.0 < float(recall) <= 1.0
    ):
        raise _spec_error(
            source,
            where,
            f"target_recall is {recall!r}",
            "expected a number in (0, 1], e.g. 0.99",
        )
    zero_shot = None
    zs = entry.get("zero_shot")
    if zs is not None:
        if not isinstance(zs, dict):
            raise _spec_error(
                source,
                where,
                f"zero_shot is {zs!r}",
                "expected a mapping with 'positive' and 'negative' prompt lists",
            )
        unknown = sorted(set(zs) - _ZERO_SHOT_KEYS)
        if unknown:
            raise _spec_error(
                source,
                where,
                f"unknown keys {unknown} under zero_shot",
                "allowed keys are ['negative', 'positive']",
            )
        zero_shot = ZeroShotPrompts(
            positive=_prompts(zs.get("positive"), source, where, "positive"),
            negative=_prompts(zs.get("negative"), source, where, "negative"),
        )
    floor = entry.get("min_clip_score")
    if floor is not None and (
        isinstance(floor, bool) or not isinstance(floor, int | float) or not -1 <= floor <= 1
    ):
        raise _spec_error(
            source,
            where,
            f"min_clip_score is {floor!r}",
            "expected a cosine similarity in [-1, 1] (e.g. 0.28) or leave it out",
        )
    return CategorySpec(
        name=name,
        description=description.strip(),
        target_recall=float(recall),
        zero_shot=zero_shot,
        min_clip_score=None if floor is None else float(floor),
    )


def parse_category_spec(data: Any, *, source: str = "<category spec>") -> list[CategorySpec]:
    """Validate a parsed category spec (``{"categories": [...]}``).

    Args:
        data: The YAML document as Python objects.
        source: Name of the file (or other origin) used in error messages.

    Returns:
        The categories in file order.

    Raises:
        CategorySpecError: Naming the file, the category and the key at fault.
    """
    if not isinstance(data, dict) or "categories" not in data:
        msg = f"{source}: expected a mapping with a 'categories:' list at the top level"
        raise CategorySpecError(msg)
    unknown = sorted(set(data) - {"categories"})
    if unknown:
        msg = f"{source}: unknown top-level keys {unknown}; only 'categories' is allowed"
        raise CategorySpecError(msg)
    entries = data["categories"]
    if not isinstance(entries, list) or not entries:
        msg = f"{source}: 'categories' is {entries!r}; expected a non-empty list of categories"
        raise CategorySpecError(msg)
    specs = [_parse_category(e, i, source) for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"{source}: categories {dupes} are defined more than once; names must be unique"
        raise CategorySpecError(msg)
    return specs


def load_category_spec(path: str | Path) -> list[CategorySpec]:
    """Load and validate a category spec YAML file (see ``configs/categories.yaml``).

    Raises:
        CategorySpecError: If the file is missing, not YAML, or a category is invalid.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        msg = f"category spec {p} does not exist; point the config at a YAML file"
        raise CategorySpecError(msg)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        msg = f"category spec {p} is not valid YAML: {exc}"
        raise CategorySpecError(msg) from exc
    return parse_category_spec(data, source=str(p))
