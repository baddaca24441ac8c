"""The faas-provider management API: status codes, error bodies, JSON shapes."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from provider.local import server
from tests.provider.conftest import deploy, start_provider

pytestmark = pytest.mark.timeout(30)


def test_create_returns_202_and_lists_function(client: httpx.Client) -> None:
    response = deploy(client, "hello", "cat", image="example/hello:1")
    assert response.status_code == 202

    listed = client.get("/system/functions")
    assert listed.status_code == 200
    assert [status["name"] for status in listed.json()] == ["hello"]
    assert listed.json()[0]["image"] == "example/hello:1"


def test_create_duplicate_returns_409(client: httpx.Client) -> None:
    assert deploy(client, "twice", "cat").status_code == 202

    response = deploy(client, "twice", "cat")

    assert response.status_code == 409
    assert "'twice'" in response.text
    assert "PUT" in response.text


@pytest.mark.parametrize(
    "service",
    [
        pytest.param("Upper", id="uppercase"),
        pytest.param("under_score", id="underscore"),
        pytest.param("-dash", id="leading-dash"),
        pytest.param("x" * 64, id="too-long"),
        pytest.param("", id="empty"),
    ],
)
def test_create_invalid_name_returns_400(client: httpx.Client, service: str) -> None:
    response = deploy(client, service, "cat")

    assert response.status_code == 400
    assert repr(service) in response.text


@pytest.mark.parametrize(
    "env_process",
    [
        pytest.param(None, id="null"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
    ],
)
def test_create_missing_envprocess_returns_400(
    client: httpx.Client, env_process: str | None
) -> None:
    response = client.post(
        "/system/functions", json={"service": "no-command", "envProcess": env_process}
    )

    assert response.status_code == 400
    assert "'no-command'" in response.text
    assert "envProcess" in response.text
    assert "'fprocess:'" in response.text
    assert "environment" not in response.text


def test_create_reads_fprocess_from_env_vars(client: httpx.Client) -> None:
    response = client.post(
        "/system/functions",
        json={"service": "env-command", "envVars": {"fprocess": "wc -c"}},
    )

    assert response.status_code == 202
    assert client.post("/function/env-command", content=b"abc").text.strip() == "3"
    status = client.get("/system/function/env-command").json()
    assert status["envVars"] == {"fprocess": "wc -c"}
    assert "envProcess" not in status


def test_envprocess_wins_over_env_fprocess(client: httpx.Client) -> None:
    response = deploy(client, "both", "cat", envVars={"fprocess": "wc -c"})

    assert response.status_code == 202
    assert client.post("/function/both", content=b"abc").text == "abc"


def test_blank_env_fprocess_returns_400(client: httpx.Client) -> None:
    response = deploy(client, "blank", "", envVars={"fprocess": "  "})

    assert response.status_code == 400
    assert "'fprocess:'" in response.text


def test_env_fprocess_unbalanced_quotes_returns_400(client: httpx.Client) -> None:
    response = deploy(client, "quoted", "", envVars={"fprocess": "sh -c 'echo"})

    assert response.status_code == 400
    assert "envVars fprocess" in response.text
    assert "quotes" in response.text


def test_create_unbalanced_quotes_returns_400(client: httpx.Client) -> None:
    response = deploy(client, "quotes", "sh -c 'echo hi")

    assert response.status_code == 400
    assert "quotes" in response.text


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="malformed"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"envProcess": "cat"}', id="no-service"),
        pytest.param(
            b'{"service": "x", "envProcess": "cat", "envVars": 3}', id="bad-env"
        ),
    ],
)
def test_create_invalid_body_returns_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/system/functions", content=body)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert "FunctionDeployment" in response.text


def test_create_other_namespace_returns_404(client: httpx.Client) -> None:
    response = deploy(client, "elsewhere", "cat", namespace="team-a")

    assert response.status_code == 404
    assert "Namespace 'team-a' not found" in response.text
    assert "openfaas-fn" in response.text


def test_create_default_namespace_by_name(client: httpx.Client) -> None:
    response = deploy(client, "named-ns", "cat", namespace="openfaas-fn")

    assert response.status_code == 202


def test_create_missing_secret_returns_400(client: httpx.Client) -> None:
    response = deploy(client, "secretive", "cat", secrets=["api-key"])

    assert response.status_code == 400
    assert "Secret 'api-key' of function 'secretive' not found" in response.text
    assert client.get("/system/function/secretive").status_code == 404


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("static", id="static"),
        pytest.param("HTTP", id="uppercase"),
        pytest.param("afterburn", id="afterburn"),
    ],
)
def test_create_unsupported_mode_returns_400(client: httpx.Client, mode: str) -> None:
    response = deploy(client, "static-site", "cat", envVars={"mode": mode})

    assert response.status_code == 400
    assert repr(mode) in response.text
    assert "'http'" in response.text
    assert "'streaming'" in response.text


def test_update_unsupported_mode_returns_400(client: httpx.Client) -> None:
    assert deploy(client, "moded", "cat").status_code == 202

    response = deploy(client, "moded", "cat", method="PUT", envVars={"mode": "x"})

    assert response.status_code == 400
    assert "'x'" in response.text
    assert "envVars" not in client.get("/system/function/moded").json()


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("streaming", id="streaming"),
        pytest.param("serializing", id="serializing"),
        pytest.param("", id="empty"),
    ],
)
def test_create_classic_modes_accepted(client: httpx.Client, mode: str) -> None:
    assert deploy(client, "forked", "cat", envVars={"mode": mode}).status_code == 202

    assert client.post("/function/forked", content=b"ok").text == "ok"


def test_create_invalid_upstream_url_returns_400(client: httpx.Client) -> None:
    response = deploy(
        client,
        "upstream",
        "cat",
        envVars={"mode": "http", "upstream_url": "localhost-without-port"},
    )

    assert response.status_code == 400
    assert "upstream_url" in response.text


def test_create_accepts_faas_cli_nulls(client: httpx.Client) -> None:
    body = {
        "service": "from-cli",
        "image": None,
        "namespace": None,
        "envProcess": "cat",
        "envVars": None,
        "constraints": None,
        "secrets": None,
        "labels": None,
        "annotations": None,
        "limits": None,
        "requests": {"memory": "128Mi", "cpu": None},
        "readOnlyRootFilesystem": None,
        "registryAuth": "deprecated",
        "network": "func_functions",
    }

    response = client.post("/system/functions", json=body)

    assert response.status_code == 202
    status = client.get("/system/function/from-cli").json()
    assert status["requests"] == {"memory": "128Mi"}
    assert "registryAuth" not in status
    assert "network" not in status


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"readOnlyRootFilesystem": "yes"},
            "readOnlyRootFilesystem: 'yes' is not a JSON boolean: send true or false",
            id="readonly-string",
        ),
        pytest.param(
            {"readOnlyRootFilesystem": 1},
            "readOnlyRootFilesystem: 1 is not a JSON boolean",
            id="readonly-number",
        ),
        pytest.param(
            {"limits": {"memory": "128Mi", "foo": "1"}},
            "limits: unknown resource 'foo': use one of memory, cpu, nvidia.com/gpu",
            id="unknown-limit",
        ),
        pytest.param(
            {"requests": {"memroy": "1Gi"}},
            "requests: unknown resource 'memroy'",
            id="misspelled-request",
        ),
        pytest.param(
            {"limits": {"memory": "abc"}},
            "limits.memory: 'abc' is not a Kubernetes quantity: use a number with "
            "an optional suffix, such as 128Mi",
            id="memory-not-quantity",
        ),
        pytest.param(
            {"requests": {"cpu": "1.5 cores"}},
            "requests.cpu: '1.5 cores' is not a Kubernetes quantity",
            id="cpu-not-quantity",
        ),
        pytest.param(
            {"limits": {"cpu": "-500m"}},
            "limits.cpu: '-500m' is negative",
            id="negative-cpu",
        ),
        pytest.param(
            {"secrets": ["s-one", "s-one"]},
            "secrets: secret 's-one' is listed more than once: list each secret once",
            id="repeated-secret",
        ),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_deploy_strict_field_returns_400(
    client: httpx.Client, method: str, fields: dict[str, object], expected: str
) -> None:
    if method == "PUT":
        assert deploy(client, "strict", "cat").status_code == 202

    response = deploy(client, "strict", "cat", method=method, **fields)

    assert response.status_code == 400
    assert expected in response.text
    listed = client.get("/system/functions").json()
    if method == "POST":
        assert listed == []
    else:
        assert "limits" not in listed[0]
        assert "readOnlyRootFilesystem" not in listed[0]


def test_deploy_accepts_kubernetes_quantities(client: httpx.Client) -> None:
    limits = {"memory": "1Gi", "cpu": "0.5", "nvidia.com/gpu": "1"}
    requests = {"memory": "128e6", "cpu": "500m"}

    response = deploy(
        client,
        "sized",
        "cat",
        limits=limits,
        requests=requests,
        readOnlyRootFilesystem=True,
    )

    assert response.status_code == 202, response.text
    status = client.get("/system/function/sized").json()
    assert status["limits"] == limits
    assert status["requests"] == requests
    assert status["readOnlyRootFilesystem"] is True


def test_update_changes_definition_keeps_created_at(client: httpx.Client) -> None:
    assert deploy(client, "changing", "cat", labels={"v": "1"}).status_code == 202
    before = client.get("/system/function/changing").json()

    response = deploy(client, "changing", "wc -c", method="PUT", labels={"v": "2"})

    assert response.status_code == 202
    after = client.get("/system/function/changing").json()
    assert after["envProcess"] == "wc -c"
    assert after["labels"] == {"v": "2"}
    assert after["createdAt"] == before["createdAt"]


def test_update_unknown_returns_404(client: httpx.Client) -> None:
    response = deploy(client, "ghost", "cat", method="PUT")

    assert response.status_code == 404
    assert "'ghost'" in response.text


def test_update_invalid_returns_400(client: httpx.Client) -> None:
    assert deploy(client, "valid", "cat").status_code == 202

    response = deploy(client, "valid", "", method="PUT")

    assert response.status_code == 400
    assert client.get("/system/function/valid").json()["envProcess"] == "cat"


def test_delete_returns_202_then_404(client: httpx.Client) -> None:
    assert deploy(client, "short-lived", "cat").status_code == 202

    first = client.request(
        "DELETE", "/system/functions", json={"functionName": "short-lived"}
    )
    second = client.request(
        "DELETE", "/system/functions", json={"functionName": "short-lived"}
    )

    assert first.status_code == 202
    assert second.status_code == 404
    assert "'short-lived'" in second.text
    assert client.get("/system/functions").json() == []


def test_delete_reads_namespace_from_query(client: httpx.Client) -> None:
    assert deploy(client, "queried", "cat").status_code == 202

    wrong = client.request(
        "DELETE",
        "/system/functions",
        params={"namespace": "team-a"},
        json={"functionName": "queried"},
    )
    right = client.request(
        "DELETE",
        "/system/functions",
        params={"namespace": "openfaas-fn"},
        json={"functionName": "queried"},
    )

    assert wrong.status_code == 404
    assert "'team-a'" in wrong.text
    assert right.status_code == 202


def test_delete_reads_namespace_from_body(client: httpx.Client) -> None:
    assert deploy(client, "bodied", "cat").status_code == 202

    response = client.request(
        "DELETE",
        "/system/functions",
        json={"functionName": "bodied", "namespace": "team-b"},
    )

    assert response.status_code == 404
    assert "'team-b'" in response.text


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{oops", id="malformed"),
        pytest.param(b"{}", id="no-name"),
        pytest.param(b'{"functionName": ""}', id="empty-name"),
        pytest.param(b'{"functionName": "Not_Valid"}', id="invalid-name"),
    ],
)
def test_delete_bad_body_returns_400(client: httpx.Client, body: bytes) -> None:
    response = client.request("DELETE", "/system/functions", content=body)

    assert response.status_code == 400
    assert response.text


def test_get_unknown_returns_404(client: httpx.Client) -> None:
    response = client.get("/system/function/nobody")

    assert response.status_code == 404
    assert "'nobody'" in response.text


def test_get_invalid_name_returns_400(client: httpx.Client) -> None:
    response = client.get("/system/function/No_Such")

    assert response.status_code == 400
    assert "'No_Such'" in response.text


def test_list_other_namespace_returns_404(client: httpx.Client) -> None:
    response = client.get("/system/functions", params={"namespace": "kube-system"})

    assert response.status_code == 404
    assert "'kube-system'" in response.text


INVALID_NAMESPACE = "Invalid namespace"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/system/functions", id="list"),
        pytest.param("GET", "/system/function/echo", id="get"),
        pytest.param("GET", "/system/secrets", id="secrets"),
        pytest.param("GET", "/system/function-endpoints/echo", id="endpoints"),
        pytest.param("GET", "/system/logs?name=echo", id="logs"),
    ],
)
def test_invalid_namespace_query_400(
    client: httpx.Client, method: str, path: str
) -> None:
    separator = "&" if "?" in path else "?"

    response = client.request(method, f"{path}{separator}namespace=Team_A")

    assert response.status_code == 400, response.text
    assert INVALID_NAMESPACE + " 'Team_A'" in response.text


def test_long_namespace_query_cut(client: httpx.Client) -> None:
    response = client.get("/system/functions", params={"namespace": "a" * 300})

    assert response.status_code == 400
    assert f"{INVALID_NAMESPACE} '{'a' * 80}...'" in response.text
    assert "a" * 81 not in response.text


def test_namespace_query_matches_body_message(client: httpx.Client) -> None:
    query = client.get("/system/functions", params={"namespace": "Bad_NS"})
    body = deploy(client, "echo2", "cat", namespace="Bad_NS")

    assert query.status_code == 400
    assert body.status_code == 400
    assert query.text == body.text


def test_list_default_namespace_by_name(client: httpx.Client) -> None:
    response = client.get("/system/functions", params={"namespace": "openfaas-fn"})

    assert response.status_code == 200
    assert response.json() == []


def test_namespaces_lists_default(client: httpx.Client) -> None:
    response = client.get("/system/namespaces")

    assert response.status_code == 200
    assert response.json() == ["openfaas-fn"]


def test_info_names_provider(client: httpx.Client) -> None:
    response = client.get("/system/info")

    assert response.status_code == 200
    info = response.json()
    assert info["provider"] == "faashub-local"
    assert info["orchestration"] == "local"
    assert info["version"]["release"] == "0.1.0"
    assert info["version"]["sha"] == ""
    assert info["version"]["commit_message"] == ""


def test_unknown_system_route_returns_404(client: httpx.Client) -> None:
    response = client.post("/system/alert", json={"alerts": []})

    assert response.status_code == 404
    assert "/system/alert" in response.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param(
            "PATCH",
            "/system/functions",
            ["GET", "POST", "PUT", "DELETE"],
            id="functions",
        ),
        pytest.param("POST", "/system/function/any", ["GET"], id="function"),
        pytest.param("GET", "/system/scale-function/any", ["POST"], id="scale"),
        pytest.param(
            "PATCH", "/system/secrets", ["GET", "POST", "PUT", "DELETE"], id="secrets"
        ),
        pytest.param("DELETE", "/system/namespaces", ["GET"], id="namespaces"),
        pytest.param("PUT", "/system/info", ["GET"], id="info"),
        pytest.param("POST", "/system/logs", ["GET"], id="logs"),
        pytest.param("POST", "/healthz", ["GET", "HEAD"], id="healthz"),
    ],
)
def test_wrong_method_returns_405_with_allow(
    client: httpx.Client, method: str, path: str, allowed: list[str]
) -> None:
    response = client.request(method, path)

    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["allow"] == ", ".join(allowed)
    assert f"Method {method} is not allowed on {path}." in response.text
    for allowed_method in allowed:
        assert allowed_method in response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/system/functions", id="list"),
        pytest.param("GET", "/system/namespaces", id="namespaces"),
        pytest.param("GET", "/system/info", id="info"),
        pytest.param("GET", "/system/secrets", id="secrets"),
        pytest.param("GET", "/healthz", id="healthz"),
        pytest.param("HEAD", "/healthz", id="healthz-head"),
    ],
)
def test_allowed_method_is_served(client: httpx.Client, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 200


def test_function_status_json_shape(client: httpx.Client) -> None:
    assert (
        deploy(
            client,
            "shaped",
            "cat",
            image="example/shaped:2",
            envVars={"greeting": "hi"},
            labels={"team": "a"},
            annotations={"topic": "orders"},
            limits={"memory": "64Mi"},
        ).status_code
        == 202
    )
    assert client.post("/function/shaped", content=b"x").status_code == 200

    status = client.get("/system/function/shaped").json()

    assert set(status) == {
        "name",
        "image",
        "namespace",
        "envProcess",
        "envVars",
        "labels",
        "annotations",
        "limits",
        "invocationCount",
        "replicas",
        "availableReplicas",
        "createdAt",
    }
    assert status["name"] == "shaped"
    assert status["namespace"] == "openfaas-fn"
    assert status["envVars"] == {"greeting": "hi"}
    assert status["limits"] == {"memory": "64Mi"}
    assert status["invocationCount"] == 1
    assert status["replicas"] == 1
    assert status["availableReplicas"] == 1
    created_at = datetime.fromisoformat(status["createdAt"])
    assert status["createdAt"].endswith("Z")
    assert created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - created_at).total_seconds()) < 60


def test_function_status_keeps_empty_name_and_image(client: httpx.Client) -> None:
    assert deploy(client, "bare", "cat").status_code == 202

    status = client.get("/system/function/bare").json()

    assert status["image"] == ""
    assert "secrets" not in status
    assert "constraints" not in status
    assert "invocationCount" not in status
    assert "readOnlyRootFilesystem" not in status


def test_healthz_returns_ok(client: httpx.Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.text == "OK"


async def test_healthz_before_start_returns_503(tmp_path: Path) -> None:
    # ASGITransport does not run the lifespan, so the backend never starts.
    app = server.create_app(LocalProviderSettings(state_dir=tmp_path / "state"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
        response = await c.get("/healthz")

    assert response.status_code == 503


def test_invoke_unknown_function_returns_404(client: httpx.Client) -> None:
    response = client.post("/function/missing/some/path", content=b"x")

    assert response.status_code == 404
    assert "'missing'" in response.text


def test_invoke_other_namespace_returns_404(client: httpx.Client) -> None:
    assert deploy(client, "local-only", "cat").status_code == 202

    response = client.post("/function/local-only.team-a", content=b"x")

    assert response.status_code == 404
    assert "Namespace 'team-a' not found" in response.text


def test_invoke_with_default_namespace_suffix(client: httpx.Client) -> None:
    assert deploy(client, "suffixed", "cat").status_code == 202

    response = client.post("/function/suffixed.openfaas-fn", content=b"echoed")

    assert response.status_code == 200
    assert response.text == "echoed"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/function/Bad_Name", id="invalid-name"),
        pytest.param("/function/", id="no-name"),
        pytest.param("/function/name.Bad_NS", id="invalid-namespace"),
    ],
)
def test_invoke_invalid_name_returns_400(client: httpx.Client, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_function_without_slash_returns_404(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/function")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert f"No route for {method} /function." in response.text
    assert "/function/NAME" in response.text


def test_unknown_route_names_the_api(client: httpx.Client) -> None:
    response = client.get("/system/telemetry")

    assert response.status_code == 404
    assert "faashub's management API serves" in response.text
    assert "The provider serves" not in response.text


def test_namespace_management_not_supported(client: httpx.Client) -> None:
    read = client.get("/system/namespace/openfaas-fn")
    created = client.post("/system/namespace/team-a", json={})

    assert read.status_code == 501
    assert "'openfaas-fn' is not supported" in read.text
    assert "GET /system/namespaces" in read.text
    assert created.status_code == 405
    assert created.headers["Allow"] == "GET"


def test_system_body_over_limit_returns_413(tmp_path: Path) -> None:
    settings = LocalProviderSettings(
        state_dir=tmp_path / "state", max_system_body_bytes=1024
    )
    running = start_provider(settings)
    try:
        with running.client() as client:
            padding = "x" * 2000
            declared = deploy(client, "big", "cat", envVars={"padding": padding})
            body = json.dumps({"service": "chunked", "envProcess": "cat"}).encode()

            def chunks() -> Iterator[bytes]:
                # No Content-Length: the provider counts as the body arrives.
                yield body[:-1]
                yield b" " * 2000
                yield body[-1:]

            streamed = client.post("/system/functions", content=chunks())
            small = deploy(client, "small", "cat")
            listed = client.get("/system/functions").json()
    finally:
        running.stop()

    for response in (declared, streamed):
        assert response.status_code == 413
        assert "limit of 1024 bytes" in response.text
        assert "--max-system-body-bytes" in response.text
    assert small.status_code == 202
    assert [status["name"] for status in listed] == ["small"]


def test_wrong_token_differs_from_missing(
    settings: LocalProviderSettings, tmp_path: Path
) -> None:
    token_file = tmp_path / "provider-token"
    token_file.write_text("the-right-token\n")
    running = start_provider(
        settings.model_copy(update={"auth_token_file": token_file})
    )
    try:
        with running.client() as client:
            missing = client.get("/system/functions")
            wrong = client.get(
                "/system/functions", headers={"Authorization": "Bearer guessed"}
            )
            right = client.get(
                "/system/functions", headers={"Authorization": "Bearer the-right-token"}
            )
    finally:
        running.stop()

    assert missing.status_code == 401
    assert missing.text.startswith("Authentication required:")
    assert wrong.status_code == 401
    assert wrong.text.startswith("Invalid token:")
    assert "guessed" not in wrong.text
    assert right.status_code == 200
