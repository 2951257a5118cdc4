"""Pixel-quality signals: measured at ingest, reported per shard, optionally filtered on.

* :mod:`~curation_assets.lib.quality.signals` — what is measured on a decoded image
  (:func:`~curation_assets.lib.quality.signals.measure`), the checks with their documented
  default thresholds (:data:`~curation_assets.lib.quality.signals.CHECKS`), the filter's
  rejections, and mergeable per-shard statistics. Pure numpy/polars/Pillow; ingest imports it.
* :mod:`~curation_assets.lib.quality.report` — what a person reads: distributions as markdown,
  the worst examples as thumbnails, and the corpus report behind ``curation quality``.

This ``__init__`` imports nothing, so that ingest can import the signals without the report's
image-reading dependencies (which import ingest's decoder).
"""
