"""An upgrade keeps the basic-auth password that an earlier install generated.

The chart reads the gateway's Secret with Helm's `lookup`, which needs a
cluster. No real Kubernetes API server can run here, so kmock's
KubernetesEmulator plays it: Helm renders the chart cluster-aware
(helm-python-sdk's `Config.render`) against the emulator, which holds, or
does not hold, the Secret of an earlier install.
"""

import asyncio
import base64
from pathlib import Path
from typing import Any

import helm_python
import kmock
import pytest
import yaml

from tests.provider.kubernetes.conftest import SECRETS, write_kubeconfig

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "faashub"
NAMESPACE = "faashub"
KEPT_PASSWORD = "password-of-the-first-install"

pytestmark = pytest.mark.timeout(60)


def rendered_password(kubeconfig: Path, values: dict[str, Any]) -> str:
    """Render the chart as an upgrade would; return the Secret's password."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        config = helm_python.Config(kubeconfig_path=str(kubeconfig))
        manifests = config.render(
            chart, values, name="hub", namespace=NAMESPACE, is_upgrade=True
        )
    for text in manifests.values():
        for document in yaml.safe_load_all(text):
            if document and document.get("kind") == "Secret":
                if document["metadata"]["name"] == "basic-auth":
                    encoded: str = document["data"]["basic-auth-password"]
                    return base64.b64decode(encoded).decode()
    raise AssertionError("the chart rendered no basic-auth Secret")


async def render_against_emulator(
    tmp_path: Path, *, stored_password: str | None, values: dict[str, Any]
) -> str:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        # Discovery must name the kind, or Helm's lookup finds no resource.
        emulator.resources[SECRETS] = emulator.ResourceInfo(
            kind="Secret", singular="secret", namespaced=True, verbs={"get", "list"}
        )
        if stored_password is not None:
            emulator.objects[SECRETS, NAMESPACE, "basic-auth"] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "basic-auth", "namespace": NAMESPACE},
                "data": {
                    "basic-auth-user": base64.b64encode(b"admin").decode(),
                    "basic-auth-password": base64.b64encode(
                        stored_password.encode()
                    ).decode(),
                },
            }
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", str(server.url).rstrip("/")
        )
        return await asyncio.to_thread(rendered_password, kubeconfig, values)


async def test_upgrade_keeps_generated_password(tmp_path: Path) -> None:
    password = await render_against_emulator(
        tmp_path, stored_password=KEPT_PASSWORD, values={}
    )
    assert password == KEPT_PASSWORD


async def test_first_install_generates_password(tmp_path: Path) -> None:
    first = await render_against_emulator(tmp_path, stored_password=None, values={})
    second = await render_against_emulator(tmp_path, stored_password=None, values={})
    assert len(first) == 32
    assert first != second


async def test_given_password_wins_over_stored(tmp_path: Path) -> None:
    values = {"basicAuth": {"password": "chosen-by-the-operator"}}
    password = await render_against_emulator(
        tmp_path, stored_password=KEPT_PASSWORD, values=values
    )
    assert password == "chosen-by-the-operator"
