"""An upgrade keeps the basic-auth password, the provider token, the NATS
token and the NATS route password that an earlier install generated.

The chart reads its earlier Secrets with Helm's `lookup`, which needs a
cluster. No real Kubernetes API server can run here, so kmock's
KubernetesEmulator plays it: Helm renders the chart cluster-aware
(helm-python-sdk's `Config.render`) against the emulator, which holds, or
does not hold, the Secrets of an earlier install.
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
KEPT_TOKEN = "token-of-the-first-install"
KEPT_NATS_TOKEN = "nats-token-of-the-first-install"
KEPT_ROUTE_PASSWORD = "route-password-of-the-first-install"
# The release is named "hub", so the chart's full name is "hub-faashub".
TOKEN_SECRET = "hub-faashub-provider-token"
NATS_TOKEN_SECRET = "hub-faashub-nats-token"

Secret = dict[str, str]

pytestmark = pytest.mark.timeout(60)


def rendered_secrets(kubeconfig: Path, values: dict[str, Any]) -> dict[str, Secret]:
    """Render the chart as an upgrade would; return its Secrets, decoded."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        config = helm_python.Config(kubeconfig_path=str(kubeconfig))
        manifests = config.render(
            chart, values, name="hub", namespace=NAMESPACE, is_upgrade=True
        )
    secrets: dict[str, Secret] = {}
    for text in manifests.values():
        for document in yaml.safe_load_all(text):
            if document and document.get("kind") == "Secret":
                secrets[document["metadata"]["name"]] = {
                    key: base64.b64decode(value).decode()
                    for key, value in document["data"].items()
                }
    return secrets


async def render_against_emulator(
    tmp_path: Path, *, stored: dict[str, Secret], values: dict[str, Any]
) -> dict[str, Secret]:
    """Render against an emulated cluster that contains the `stored` Secrets."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        # Discovery must name the kind, or Helm's lookup finds no resource.
        emulator.resources[SECRETS] = emulator.ResourceInfo(
            kind="Secret", singular="secret", namespaced=True, verbs={"get", "list"}
        )
        for name, data in stored.items():
            emulator.objects[SECRETS, NAMESPACE, name] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "data": {
                    key: base64.b64encode(value.encode()).decode()
                    for key, value in data.items()
                },
            }
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig", str(server.url).rstrip("/")
        )
        return await asyncio.to_thread(rendered_secrets, kubeconfig, values)


STORED = {
    "basic-auth": {"basic-auth-user": "admin", "basic-auth-password": KEPT_PASSWORD},
    TOKEN_SECRET: {"provider-token": KEPT_TOKEN},
    NATS_TOKEN_SECRET: {
        "nats-token": KEPT_NATS_TOKEN,
        "nats-route-password": KEPT_ROUTE_PASSWORD,
    },
}


async def test_upgrade_keeps_generated_secrets(tmp_path: Path) -> None:
    secrets = await render_against_emulator(tmp_path, stored=STORED, values={})
    assert secrets["basic-auth"]["basic-auth-password"] == KEPT_PASSWORD
    assert secrets[TOKEN_SECRET]["provider-token"] == KEPT_TOKEN
    assert secrets[NATS_TOKEN_SECRET]["nats-token"] == KEPT_NATS_TOKEN
    assert secrets[NATS_TOKEN_SECRET]["nats-route-password"] == KEPT_ROUTE_PASSWORD


async def test_first_install_generates_secrets(tmp_path: Path) -> None:
    first = await render_against_emulator(tmp_path, stored={}, values={})
    second = await render_against_emulator(tmp_path, stored={}, values={})
    password = first["basic-auth"]["basic-auth-password"]
    token = first[TOKEN_SECRET]["provider-token"]
    nats_token = first[NATS_TOKEN_SECRET]["nats-token"]
    route_password = first[NATS_TOKEN_SECRET]["nats-route-password"]
    assert len(password) == 32
    assert len(token) == 48
    assert len(nats_token) == 48
    assert len(route_password) == 48
    assert route_password != nats_token
    assert password != second["basic-auth"]["basic-auth-password"]
    assert token != second[TOKEN_SECRET]["provider-token"]
    assert nats_token != second[NATS_TOKEN_SECRET]["nats-token"]
    assert route_password != second[NATS_TOKEN_SECRET]["nats-route-password"]


async def test_given_password_wins_over_stored(tmp_path: Path) -> None:
    values = {"basicAuth": {"password": "chosen-by-the-operator"}}
    secrets = await render_against_emulator(tmp_path, stored=STORED, values=values)
    assert secrets["basic-auth"]["basic-auth-password"] == "chosen-by-the-operator"


async def test_upgrade_generates_missing_nats_token(tmp_path: Path) -> None:
    # An upgrade from a chart without the NATS token, or after the Secret was
    # deleted to rotate it, generates a new one and keeps the other Secrets.
    stored = {name: data for name, data in STORED.items() if name != NATS_TOKEN_SECRET}
    secrets = await render_against_emulator(tmp_path, stored=stored, values={})
    assert secrets[TOKEN_SECRET]["provider-token"] == KEPT_TOKEN
    nats_token = secrets[NATS_TOKEN_SECRET]["nats-token"]
    assert len(nats_token) == 48
    assert nats_token != KEPT_NATS_TOKEN


async def test_upgrade_adds_route_password(tmp_path: Path) -> None:
    # A Secret from a chart without route passwords keeps its token and gets
    # a new route password.
    stored = {**STORED, NATS_TOKEN_SECRET: {"nats-token": KEPT_NATS_TOKEN}}
    values = {"nats": {"replicas": 3}}
    secrets = await render_against_emulator(tmp_path, stored=stored, values=values)
    assert secrets[NATS_TOKEN_SECRET]["nats-token"] == KEPT_NATS_TOKEN
    route_password = secrets[NATS_TOKEN_SECRET]["nats-route-password"]
    assert len(route_password) == 48
    assert route_password != KEPT_NATS_TOKEN
