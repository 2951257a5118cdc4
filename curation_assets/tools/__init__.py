"""Tools around the pipeline, never imported by ``lib`` or ``defs``.

The demo corpus (``demo``), evaluation against its planted ground truth (``evaluate``),
synthetic embeddings (``synthetic``), the benchmarks (``bench``, ``bench_dedup``,
``bench_pipeline``, ``bench_daemon``) and the ``dagster dev`` driver (``devserver``). The CLI
and the tests import them; the assets do not.
"""
