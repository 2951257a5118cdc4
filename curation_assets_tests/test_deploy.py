"""The Kubernetes files under deploy/ agree with the code and the pinned versions.

They cannot be applied here (no Kubernetes, no container runtime); this keeps them from
drifting: every `CURATION_*` variable they set is one the package reads, the Ray and Dagster
versions they name are the ones installed, and the image installs extras that exist.
"""

import re
import tomllib
from pathlib import Path

import dagster
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _package_source() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "curation_assets").rglob("*.py"))


def _env_names(node: object) -> set[str]:
    """Every ``name:`` of an env list entry in a parsed YAML tree."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node:
            found.add(node["name"])
        for value in node.values():
            found |= _env_names(value)
    elif isinstance(node, list):
        for value in node:
            found |= _env_names(value)
    return found


def test_deploy_files_parse_and_set_only_variables_the_package_reads():
    values = yaml.safe_load((DEPLOY / "helm" / "dagster-values.yaml").read_text())
    cluster = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    names = _env_names(values) | _env_names(cluster)
    ours = {n for n in names if n.startswith("CURATION_")}
    assert {"CURATION_ENGINE", "CURATION_DELTA_ROOT"} <= ours, names
    source = _package_source()
    unread = sorted(n for n in ours if f'"{n}"' not in source)
    assert not unread, f"deploy/ sets variables the package never reads: {unread}"
    module = values["dagster-user-deployments"]["deployments"][0]["dagsterApiGrpcArgs"]
    assert module[:2] == ["--module-name", "curation_assets.definitions"]
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["workerGroupSpecs"]


def test_deploy_files_name_the_installed_versions():
    ray = pytest.importorskip("ray")
    cluster = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == ray.__version__
    helm = (DEPLOY / "helm" / "dagster-values.yaml").read_text()
    assert f"--version {dagster.__version__}" in helm
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    wanted = re.search(r'pip install "\.\[([a-z,]+)\]"', (DEPLOY / "Dockerfile").read_text())
    assert wanted and set(wanted.group(1).split(",")) <= extras, wanted
