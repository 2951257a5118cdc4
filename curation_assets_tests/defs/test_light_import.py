"""Loading the definitions does not import torch: a run that never embeds starts without it.

Every Dagster run worker loads the whole code location; torch costs it 1.5 s and ~300 MB
(measured on the 2-core test machine: definitions 2.2 s → 1.1 s, 780 → 290 MB peak RSS).
Only the steps that embed (and the tools that need a model) import it.
"""

import subprocess
import sys


def test_the_definitions_load_without_torch(tmp_path):
    code = (
        "import sys\n"
        "from curation_assets.definitions import build_defs\n"
        f"defs = build_defs({str(tmp_path)!r})\n"
        "defs.resolve_job_def('dedup_job')\n"
        "heavy = ('torch', 'torchvision', 'open_clip', 'timm')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_the_embedder_names_resolve_on_first_use():
    import curation_assets.lib.embed as embed

    assert embed.EmbedderSpec().backend == "timm"  # torch-free
    assert callable(embed.load_embedder) and embed.Embedder.__name__ == "Embedder"
    assert set(embed.__all__) <= set(dir(embed)) | set(embed._LAZY)
