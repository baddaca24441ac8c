"""The console and the async-call listing over plain HTTP: auth, headers,
forgery checks, escaping, the listing and the metrics JSON."""

import base64
import socket
import time
import uuid
from typing import Any

import httpx
import pytest

from gateway.ui.async_outcomes import MIN_READ_INTERVAL_S
from tests.ui.conftest import SCRIPT_ANNOTATION, ConsoleHub, deploy

pytestmark = pytest.mark.timeout(60)

CONSOLE_HEADERS = {"Content-Type": "application/json", "X-Faashub-Console": "1"}
PAGES = ["/ui", "/ui/functions/openfaas-fn/echo", "/ui/dead-letters"]


@pytest.mark.parametrize(
    "path",
    [
        *PAGES,
        "/ui/static/console.js",
        "/ui/api/functions/openfaas-fn/echo/metrics",
        "/system/async-calls?function=echo",
    ],
)
def test_console_without_credentials_401(console_hub: ConsoleHub, path: str) -> None:
    response = httpx.get(console_hub.url + path)
    assert response.status_code == 401
    challenges = response.headers.get_list("www-authenticate")
    assert any(value.startswith('Basic realm="faashub"') for value in challenges)


def test_console_401_has_security_headers(console_hub: ConsoleHub) -> None:
    response = httpx.get(console_hub.url + "/ui")
    system = httpx.get(console_hub.url + "/system/functions")
    assert response.status_code == 401
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers.get_list("content-security-policy") == [
        response.headers["content-security-policy"]
    ]
    # The /system API keeps its plain responses.
    assert system.status_code == 401
    assert "content-security-policy" not in system.headers


def test_console_post_without_credentials_401(console_hub: ConsoleHub) -> None:
    response = httpx.post(
        console_hub.url + "/ui/api/dead-letters/purge",
        json={"call_ids": ["x"]},
        headers=CONSOLE_HEADERS,
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        *PAGES,
        "/ui/static/console.js",
        "/ui/static/console.css",
        "/ui/api/functions/openfaas-fn/echo/metrics",
        "/ui/missing",
    ],
)
def test_security_headers(console_hub: ConsoleHub, path: str) -> None:
    response = console_hub.client.get(path)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_static_files_content_types(console_hub: ConsoleHub) -> None:
    script = console_hub.client.get("/ui/static/console.js")
    style = console_hub.client.get("/ui/static/console.css")
    unknown = console_hub.client.get("/ui/static/secret.txt")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert unknown.status_code == 404


def test_pages_have_no_inline_script(console_hub: ConsoleHub) -> None:
    for path in PAGES:
        page = console_hub.client.get(path)
        assert page.status_code == 200, path
        assert page.text.count("<script") == 1, path
        assert '<script src="/ui/static/console.js" defer></script>' in page.text


def test_pages_have_empty_icon(console_hub: ConsoleHub) -> None:
    # Without it, browsers request /favicon.ico and log its 404 as an error.
    for path in PAGES:
        page = console_hub.client.get(path).text
        assert '<link rel="icon" href="data:,">' in page, path


def test_name_pattern_escapes_hyphen(console_hub: ConsoleHub) -> None:
    page = console_hub.client.get("/ui").text
    assert 'pattern="[a-z0-9]([\\-a-z0-9]*[a-z0-9])?"' in page


def test_annotation_script_is_escaped(console_hub: ConsoleHub) -> None:
    for path in ["/ui", "/ui/functions/openfaas-fn/echo"]:
        page = console_hub.client.get(path).text
        assert SCRIPT_ANNOTATION not in page, path
        assert "&lt;script&gt;alert(&#x27;annotation&#x27;)&lt;/script&gt;" in page


def test_functions_page_lists_badges(console_hub: ConsoleHub) -> None:
    page = console_hub.client.get("/ui").text
    assert '<span class="badge topic">topic: orders</span>' in page
    assert '<span class="badge schedule">schedule: */5 * * * *</span>' in page
    assert 'href="/ui/functions/openfaas-fn/flaky"' in page


def test_unknown_function_page_404(console_hub: ConsoleHub) -> None:
    assert console_hub.client.get("/ui/functions/openfaas-fn/nope").status_code == 404
    invalid = console_hub.client.get("/ui/functions/openfaas-fn/Bad_Name")
    assert invalid.status_code == 400
    assert "Bad_Name" in invalid.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ui"),
        ("GET", "/ui/dead-letters"),
        ("GET", "/system/async-calls?function=echo"),
        ("POST", "/ui/api/functions/openfaas-fn/echo/invoke"),
        ("POST", "/ui/api/dead-letters/redrive"),
        ("DELETE", "/ui/api/functions/openfaas-fn/echo"),
    ],
)
def test_other_origin_rejected_403(
    console_hub: ConsoleHub, method: str, path: str
) -> None:
    response = console_hub.client.request(
        method,
        path,
        json={"call_ids": ["x"]},
        headers={**CONSOLE_HEADERS, "Origin": "http://attacker.example"},
    )
    assert response.status_code == 403
    assert "attacker.example" in response.text


def test_same_origin_accepted(console_hub: ConsoleHub) -> None:
    origin = console_hub.url
    page = console_hub.client.get("/ui", headers={"Origin": origin})
    listing = console_hub.client.get(
        "/system/async-calls?function=echo", headers={"Origin": origin}
    )
    assert page.status_code == 200
    assert listing.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "application/json"}, id="no-console-header"),
        pytest.param(
            {"Content-Type": "text/plain", "X-Faashub-Console": "1"}, id="text-plain"
        ),
        pytest.param(
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Faashub-Console": "1",
            },
            id="form",
        ),
        pytest.param({**CONSOLE_HEADERS, "Sec-Fetch-Site": "cross-site"}, id="fetch"),
    ],
)
def test_forgeable_state_change_403(
    console_hub: ConsoleHub, headers: dict[str, str]
) -> None:
    for path in [
        "/ui/api/functions/openfaas-fn/echo/invoke",
        "/ui/api/dead-letters/purge",
        "/ui/api/functions",
    ]:
        response = console_hub.client.post(
            path, content=b'{"call_ids": ["x"]}', headers=headers
        )
        assert response.status_code == 403, path
    removed = console_hub.client.delete(
        "/ui/api/functions/openfaas-fn/echo", headers=headers
    )
    assert removed.status_code == 403
    assert console_hub.client.get("/system/function/echo").status_code == 200


def test_invoke_sync_through_console(console_hub: ConsoleHub) -> None:
    response = console_hub.client.post(
        "/ui/api/functions/openfaas-fn/echo/invoke",
        json={
            "mode": "sync",
            "method": "POST",
            "headers": [["X-Trace-Me", "1"]],
            "body": "über",
        },
        headers=CONSOLE_HEADERS,
    )
    assert response.status_code == 200
    result = response.json()
    assert result["status"] == 200
    assert result["body_base64"] == "w7xiZXI="
    assert result["body_size"] == 5
    assert result["body_truncated"] is False
    assert any(name == "x-served-by" for name, _ in result["headers"])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"mode": "later"}, "Invalid mode"),
        ({"mode": "async", "method": "DELETE"}, "Invalid method"),
        ({"headers": [["Host", "x"]]}, "sets header"),
        ({"headers": [["X-A", "a\r\nb"]]}, "line break"),
        ({"headers": {"X-A": "1"}}, "headers must be"),
        ({"path": "/a b"}, "Invalid path"),
        ({"body": 7}, "body must be"),
    ],
)
def test_invoke_invalid_request_400(
    console_hub: ConsoleHub, document: dict[str, object], message: str
) -> None:
    response = console_hub.client.post(
        "/ui/api/functions/openfaas-fn/echo/invoke",
        json=document,
        headers=CONSOLE_HEADERS,
    )
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_async_calls_list_queued_and_finished(console_hub: ConsoleHub) -> None:
    client = console_hub.client
    parked_id = f"parked-{uuid.uuid4()}"
    echo_id = f"echo-{uuid.uuid4()}"
    assert (
        client.post(
            "/async-function/parked", content=b"x", headers={"X-Call-Id": parked_id}
        ).status_code
        == 202
    )
    assert (
        client.post(
            "/async-function/echo", content=b"y", headers={"X-Call-Id": echo_id}
        ).status_code
        == 202
    )
    console_hub.wait_for_state(echo_id, "succeeded")

    parked = client.get("/system/async-calls", params={"function": "parked"}).json()
    echo = client.get(
        "/system/async-calls", params={"function": "echo.openfaas-fn", "limit": "500"}
    ).json()

    parked_states = {call["call_id"]: call["state"] for call in parked["calls"]}
    echo_states = {call["call_id"]: call["state"] for call in echo["calls"]}
    assert parked_states[parked_id] == "queued"
    assert echo_states[echo_id] == "succeeded"
    assert parked_id not in echo_states
    assert echo_id not in parked_states
    assert parked["namespace"] == "openfaas-fn"
    assert parked["scan_limit"] == 2000
    assert parked["scan_limit_reached"] is False
    assert parked["order"] == "newest-first"


def test_async_calls_list_limit_truncates(console_hub: ConsoleHub) -> None:
    for _ in range(3):
        response = console_hub.client.post("/async-function/parked", content=b"z")
        assert response.status_code == 202
    listing = console_hub.client.get(
        "/system/async-calls", params={"function": "parked", "limit": "2"}
    ).json()
    assert listing["count"] == 2
    assert listing["truncated"] is True
    accepted = [call["accepted_at"] for call in listing["calls"]]
    assert accepted == sorted(accepted, reverse=True)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Missing parameter function"),
        ("function=Bad_Name", "Invalid function"),
        ("function=echo&limit=0", "Invalid limit '0'"),
        ("function=echo&limit=501", "Invalid limit '501'"),
        ("function=echo&limit=ten", "Invalid limit 'ten'"),
        ("function=echo&colour=red", "Unknown parameter 'colour'"),
        ("function=echo.team-a&namespace=team-b", "names namespace 'team-a'"),
        ("function=echo&limit=1&limit=2", "Parameter limit is given more than once"),
        ("function=echo&function=flaky", "Parameter function is given more than"),
        ("function=echo&namespace=a&namespace=b", "Parameter namespace is given"),
    ],
)
def test_async_calls_list_bad_input_400(
    console_hub: ConsoleHub, query: str, message: str
) -> None:
    response = console_hub.client.get(f"/system/async-calls?{query}")
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_metrics_json_counts_sync_calls(console_hub: ConsoleHub) -> None:
    path = "/ui/api/functions/openfaas-fn/echo/metrics"
    before = console_hub.client.get(path).json()
    for _ in range(3):
        assert (
            console_hub.client.post("/function/echo", content=b"m").status_code == 200
        )
    after = console_hub.client.get(path).json()
    assert after["function"] == "echo.openfaas-fn"
    assert after["total"] - before["total"] == 3
    assert after["invocations"]["200"] - before["invocations"].get("200", 0) == 3
    assert after["server_errors"] == before["server_errors"]
    assert after["at"] >= before["at"]
    assert after["duration_seconds_sum"] > before["duration_seconds_sum"]


def test_metrics_json_counts_server_errors(console_hub: ConsoleHub) -> None:
    path = "/ui/api/functions/openfaas-fn/flaky/metrics"
    before = console_hub.client.get(path).json()
    assert console_hub.client.post("/function/flaky", content=b"e").status_code == 500
    after = console_hub.client.get(path).json()
    assert after["server_errors"] - before["server_errors"] == 1


def wait_for_async_counts(
    console_hub: ConsoleHub,
    path: str,
    *,
    expected: dict[str, int],
    before: dict[str, Any],
    timeout_s: float = 20.0,
) -> dict[str, Any]:
    """Poll the metrics JSON until the finished async calls rose by `expected`."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = console_hub.client.get(path).json()
        finished = after["async_calls"]["finished"]
        change = {
            state: finished[state] - before["async_calls"]["finished"][state]
            for state in expected
        }
        if change == expected or time.monotonic() > deadline:
            assert change == expected
            return after
        time.sleep(0.3)


def read_fresh_metrics(console_hub: ConsoleHub, path: str) -> dict[str, Any]:
    """Return the metrics JSON after a new read of the status records.

    A request within MIN_READ_INTERVAL_S of the previous read reuses its
    counts, which may leave out records of earlier tests.
    """
    time.sleep(MIN_READ_INTERVAL_S)
    document: dict[str, Any] = console_hub.client.get(path).json()
    return document


def test_metrics_json_counts_async_calls(console_hub: ConsoleHub) -> None:
    path = "/ui/api/functions/openfaas-fn/echo/metrics"
    before = read_fresh_metrics(console_hub, path)
    for index in range(3):
        response = console_hub.client.post(
            "/async-function/echo",
            content=b"a",
            headers={"X-Call-Id": f"counted-{uuid.uuid4()}-{index}"},
        )
        assert response.status_code == 202
        console_hub.wait_for_state(response.headers["X-Call-Id"], "succeeded")
    after = wait_for_async_counts(
        console_hub, path, expected={"succeeded": 3, "failed": 0}, before=before
    )
    accepted = after["async_calls"]["accepted"] - before["async_calls"]["accepted"]
    assert accepted == 3
    assert (
        after["async_calls"]["finished"]["dead-lettered"]
        == (before["async_calls"]["finished"]["dead-lettered"])
    )
    assert after["async_calls"]["not_counted"] == 0


def test_metrics_json_skips_duplicate_accept(console_hub: ConsoleHub) -> None:
    path = "/ui/api/functions/openfaas-fn/parked/metrics"
    before = console_hub.client.get(path).json()["async_calls"]["accepted"]
    call_id = f"twice-{uuid.uuid4()}"
    for _ in range(2):
        response = console_hub.client.post(
            "/async-function/parked", content=b"d", headers={"X-Call-Id": call_id}
        )
        assert response.status_code == 202
    after = console_hub.client.get(path).json()["async_calls"]["accepted"]
    assert after - before == 1


def test_metrics_json_counts_dead_letters(console_hub: ConsoleHub) -> None:
    path = "/ui/api/functions/openfaas-fn/doomed/metrics"
    before = read_fresh_metrics(console_hub, path)
    call_id = f"doomed-{uuid.uuid4()}"
    response = console_hub.client.post(
        "/async-function/doomed", content=b"d", headers={"X-Call-Id": call_id}
    )
    assert response.status_code == 202
    console_hub.wait_for_state(call_id, "dead-lettered")
    wait_for_async_counts(
        console_hub, path, expected={"dead-lettered": 1, "succeeded": 0}, before=before
    )
    purged = console_hub.client.delete(f"/system/dead-letters/{call_id}")
    assert purged.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/system/functions"),
        ("POST", "/system/dead-letters/redrive"),
        ("DELETE", "/system/functions"),
    ],
)
def test_system_change_from_other_origin_403(
    console_hub: ConsoleHub, method: str, path: str
) -> None:
    # Once a browser has the credentials, another site's form could post to
    # the /system API with them.
    response = console_hub.client.request(
        method,
        path,
        content=b"functionName=echo",
        headers={"Content-Type": "text/plain", "Origin": "http://attacker.example"},
    )
    assert response.status_code == 403
    assert "attacker.example" in response.text
    assert console_hub.client.get("/system/function/echo").status_code == 200


def test_system_change_without_origin_passes(console_hub: ConsoleHub) -> None:
    # faas-cli sends no Origin; a same-origin browser request sends its own.
    for headers in ({}, {"Origin": console_hub.url}):
        response = console_hub.client.post(
            "/system/scale-function/parked",
            json={"serviceName": "parked", "replicas": 1},
            headers=headers,
        )
        assert response.status_code in (200, 202), response.text


def test_system_read_from_other_origin_passes(console_hub: ConsoleHub) -> None:
    response = console_hub.client.get(
        "/system/functions", headers={"Origin": "http://dashboard.example"}
    )
    assert response.status_code == 200


def test_websocket_handshake_refused(console_hub: ConsoleHub) -> None:
    # No gateway route speaks WebSocket; the handshake must end cleanly.
    host = console_hub.url.removeprefix("http://")
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=10) as connection:
        connection.sendall(
            b"GET /system/functions HTTP/1.1\r\n"
            b"Host: " + host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        status_line = connection.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 403"), status_line


def console_authorization(console_hub: ConsoleHub) -> bytes:
    folder = console_hub.hub.state_dir / "credentials"
    pair = (
        (folder / "basic-auth-user").read_text()
        + ":"
        + (folder / "basic-auth-password").read_text()
    )
    return b"Basic " + base64.b64encode(pair.encode())


def send_raw(console_hub: ConsoleHub, data: bytes) -> bytes:
    """Send `data` on a new connection; return the response up to its close.

    A socket timeout (10 s) fails the test if the gateway waits for more.
    """
    host = console_hub.url.removeprefix("http://")
    address, port = host.rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=10) as connection:
        connection.sendall(data)
        # The gateway closes the connection after rejecting the body.
        response = b""
        while received := connection.recv(65536):
            response += received
        return response


def request_head(console_hub: ConsoleHub, path: str, framing: bytes) -> bytes:
    host = console_hub.url.removeprefix("http://").encode()
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: " + host + b"\r\n"
        b"Authorization: " + console_authorization(console_hub) + b"\r\n"
        b"Content-Type: application/json\r\nX-Faashub-Console: 1\r\n"
        + framing
        + b"\r\n"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("path", "cap"),
    [
        ("/ui/api/functions/openfaas-fn/echo/invoke", 2 * 1024 * 1024),
        ("/ui/api/functions", 256 * 1024),
        ("/ui/api/dead-letters/purge", 256 * 1024),
    ],
)
def test_declared_length_over_cap_413(
    console_hub: ConsoleHub, path: str, cap: int
) -> None:
    # No body byte is sent: the gateway must respond from the header alone.
    framing = b"Content-Length: " + str(cap + 1).encode() + b"\r\n"
    response = send_raw(console_hub, request_head(console_hub, path, framing))
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert f"exceeds {cap} bytes".encode() in rest
    assert b"/function/NAME or /async-function/NAME" in rest


@pytest.mark.timeout(30)
def test_chunked_body_over_cap_413(console_hub: ConsoleHub) -> None:
    # 320 KiB in 64 KiB chunks and no last chunk: the gateway must respond
    # soon after the cap is passed, without waiting for the end of the body.
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    head = request_head(
        console_hub,
        "/ui/api/dead-letters/redrive",
        b"Transfer-Encoding: chunked\r\n",
    )
    response = send_raw(console_hub, head + chunk * 5)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert b"exceeds 262144 bytes" in response


def test_body_under_cap_accepted(console_hub: ConsoleHub) -> None:
    body = "x" * (1024 * 1024)
    response = console_hub.client.post(
        "/ui/api/functions/openfaas-fn/echo/invoke",
        json={"mode": "sync", "body": body},
        headers=CONSOLE_HEADERS,
    )
    assert response.status_code == 200
    assert response.json()["body_size"] == len(body)


def test_body_over_invoke_limit_400(console_hub: ConsoleHub) -> None:
    body = "x" * (1024 * 1024 + 1)
    response = console_hub.client.post(
        "/ui/api/functions/openfaas-fn/echo/invoke",
        json={"mode": "sync", "body": body},
        headers=CONSOLE_HEADERS,
    )

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert f"The body has {len(body)} bytes" in detail
    assert "/function/NAME or /async-function/NAME" in detail


@pytest.mark.parametrize(
    ("action", "done_key"), [("redrive", "redriven"), ("purge", "purged")]
)
def test_unknown_dead_letter_not_found(
    console_hub: ConsoleHub, action: str, done_key: str
) -> None:
    missing = f"gone-{uuid.uuid4()}"
    response = console_hub.client.post(
        f"/ui/api/dead-letters/{action}",
        json={"call_ids": [missing]},
        headers=CONSOLE_HEADERS,
    )
    assert response.status_code == 200
    result = response.json()
    assert result[done_key] == []
    assert result["failed"] == [
        {"call_id": missing, "kind": None, "seq": None, "error": "not found"}
    ]


def test_deploy_existing_name_suggests_remove(console_hub: ConsoleHub) -> None:
    response = console_hub.client.post(
        "/ui/api/functions",
        json={"service": "echo", "image": "local/echo", "envProcess": "cat"},
        headers=CONSOLE_HEADERS,
    )
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "'echo' already exists in namespace 'openfaas-fn'" in detail
    assert "remove it first" in detail
    assert "faashub deploy" in detail
    assert "PUT" not in detail


def test_invoke_header_bytes_match_curl(console_hub: ConsoleHub) -> None:
    name = "header-echo"
    deploy(console_hub.client, name, "sh -c 'printf %s \"$Http_X_Greeting\"'")
    value = "grüße ✓ 日本"
    try:
        direct = console_hub.client.post(
            f"/function/{name}", headers={"X-Greeting": value.encode()}
        )
        console = console_hub.client.post(
            f"/ui/api/functions/openfaas-fn/{name}/invoke",
            json={"mode": "sync", "headers": [["X-Greeting", value]]},
            headers=CONSOLE_HEADERS,
        )
    finally:
        console_hub.client.request(
            "DELETE", "/system/functions", json={"functionName": name}
        )
    assert direct.status_code == 200
    assert direct.content
    assert console.status_code == 200
    assert base64.b64decode(console.json()["body_base64"]) == direct.content
