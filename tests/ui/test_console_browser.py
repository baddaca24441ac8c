"""The console in headless Chromium: list, invoke, follow, redrive, deploy,
the chart, selecting and purging on a later dead-letter page, and purging
one of two dead letters of a call id.

Debian's `chromium` package provides the browser, driven by Playwright's
Python package; no browser is downloaded. Without /usr/bin/chromium the
tests skip, or fail when FAASHUB_REQUIRE_BROWSER=1 (as `.ci/run` sets).
The tests run in file order on one page, and each saves a full-page
screenshot to `FAASHUB_TEST_ARTIFACTS` (default `test-artifacts/ui/` under
the repository root).
"""

import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from gateway.ui.console import DEAD_LETTERS_SHOWN
from tests.ui.conftest import (
    SCRIPT_ANNOTATION,
    ConsoleHub,
    doomed_dead_letters,
    letters_of_one_call,
)

pytestmark = pytest.mark.timeout(60)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPOSITORY = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Seconds a page may take to show what a test waits for.
WAIT_MS = 20_000


def artifacts_folder() -> Path:
    folder = Path(
        os.environ.get("FAASHUB_TEST_ARTIFACTS") or REPOSITORY / "test-artifacts" / "ui"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(page: Page, name: str) -> None:
    path = artifacts_folder() / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 1000, path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = (
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install chromium) to run the console's browser tests."
        )
        # CI installs chromium and sets FAASHUB_REQUIRE_BROWSER=1, so there a
        # missing browser fails; a developer's machine without it skips.
        if os.environ.get("FAASHUB_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def page(browser: Browser, console_hub: ConsoleHub) -> Iterator[Page]:
    credentials = read_credentials(console_hub)
    context = browser.new_context(
        http_credentials={"username": credentials[0], "password": credentials[1]},
        base_url=console_hub.url,
        viewport={"width": 1280, "height": 900},
    )
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda message: record_console_error(errors, message))
    opened.on("dialog", accept_dialog)
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], f"errors on the console pages: {errors}"


def record_console_error(errors: list[str], message: ConsoleMessage) -> None:
    # Chromium reports a failed resource load, such as /favicon.ico, and an
    # invalid `pattern` attribute as console errors. A call's status request
    # may get 404 by design (an unknown or expired call), and the page shows it.
    url = message.location.get("url") or ""
    if message.type == "error" and not path_of(url).startswith("/async-calls/"):
        errors.append(f"{message.text} ({url})")


def accept_dialog(dialog: Dialog) -> None:
    dialog.accept()


def read_credentials(console_hub: ConsoleHub) -> tuple[str, str]:
    folder = console_hub.hub.state_dir / "credentials"
    return (
        (folder / "basic-auth-user").read_text(),
        (folder / "basic-auth-password").read_text(),
    )


def test_functions_page_shows_annotations(page: Page) -> None:
    page.goto("/ui")
    row = page.locator("#functions tr[data-function=echo]")
    expect(row).to_contain_text("topic: orders")
    expect(row).to_contain_text("schedule: */5 * * * *")
    expect(row.locator("ul.annotations")).to_contain_text(SCRIPT_ANNOTATION)
    expect(page.locator("#functions tr[data-function=flaky]")).to_be_visible()
    save_screenshot(page, "functions")


def test_invoke_sync_shows_body(page: Page) -> None:
    page.goto("/ui")
    page.click("a[href='/ui/functions/openfaas-fn/echo']")
    expect(page.locator("h1")).to_have_text("echo")
    page.fill("#invoke textarea[name=body]", "hello from the console")
    page.fill("#invoke textarea[name=headers]", "X-Greeting: hi")
    page.click("#invoke button[type=submit]")
    expect(page.locator("#result-status")).to_have_text("200")
    expect(page.locator("#result-body")).to_have_text("hello from the console")
    expect(page.locator("#result-headers")).to_contain_text("x-served-by")
    expect(page.locator("#chart svg")).to_be_visible()


def test_invoke_async_reaches_succeeded(page: Page, console_hub: ConsoleHub) -> None:
    page.goto("/ui/functions/openfaas-fn/echo")
    page.check("#invoke input[name=mode][value=async]")
    page.fill("#invoke input[name=callback]", console_hub.receiver.url)
    page.fill("#invoke textarea[name=body]", "queued from the console")
    before = len(console_hub.receiver.received)
    page.click("#invoke button[type=submit]")
    expect(page.locator("#result-status")).to_have_text("202")
    expect(page.locator("#async-call-state")).to_have_text("succeeded")
    call_id = page.locator("#async-call-id").inner_text()
    callbacks = console_hub.receiver.wait_for(before + 1)
    [callback] = [item for item in callbacks if item.headers["X-Call-Id"] == call_id]
    assert callback.body == b"queued from the console"
    row = page.locator(f"#calls tr[data-call-id='{call_id}']")
    expect(row).to_contain_text("succeeded")
    save_screenshot(page, "function")


def test_redrive_dead_letter_runs_again(page: Page, console_hub: ConsoleHub) -> None:
    call_id = f"flaky-{uuid.uuid4()}"
    response = console_hub.client.post(
        "/async-function/flaky",
        content=b"second time lucky",
        headers={"X-Call-Id": call_id, "X-Callback-Url": console_hub.receiver.url},
    )
    assert response.status_code == 202
    console_hub.wait_for_state(call_id, "dead-lettered")

    page.goto("/ui/dead-letters")
    row = page.locator(f"#dead-letters tr[data-call-id='{call_id}']")
    expect(row).to_contain_text("flaky.openfaas-fn")
    save_screenshot(page, "dead-letters")

    console_hub.flag_file.touch()
    try:
        before = len(console_hub.receiver.received)
        row.locator("button[data-action=redrive]").click()
        expect(row).to_have_count(0)
        expect(page.locator("#notice")).to_have_text(re.compile("Redrove 1 "))
        callbacks = console_hub.receiver.wait_for(before + 1)
    finally:
        console_hub.flag_file.unlink()
    rerun = [item for item in callbacks[before:] if item.body == b"second time lucky"]
    assert len(rerun) == 1
    assert rerun[0].headers["X-Function-Status"] == "200"
    assert rerun[0].headers["X-Call-Id"] != call_id
    letters = console_hub.client.get("/system/dead-letters").json()["dead_letters"]
    assert call_id not in [letter["call_id"] for letter in letters]


def test_deploy_and_remove_from_page(page: Page, console_hub: ConsoleHub) -> None:
    name = "made-in-console"
    page.goto("/ui")
    page.fill("#deploy input[name=service]", name)
    page.fill("#deploy input[name=envProcess]", "cat")
    page.fill("#deploy input[name=image]", "local/made")
    page.fill("#deploy textarea[name=annotations]", "topic=made\nowner=<b>ops</b>")
    page.click("#deploy button[type=submit]")
    row = page.locator(f"#functions tr[data-function={name}]")
    expect(row).to_contain_text("topic: made")
    expect(row).to_contain_text("owner=<b>ops</b>")
    deployed = console_hub.client.get(f"/system/function/{name}")
    assert deployed.status_code == 200
    assert deployed.json()["annotations"]["owner"] == "<b>ops</b>"

    row.locator("button[data-action=remove]").click()
    expect(row).to_have_count(0)
    assert console_hub.client.get(f"/system/function/{name}").status_code == 404


def path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def test_name_pattern_checked_by_browser(page: Page) -> None:
    page.goto("/ui")
    name = page.locator("#deploy input[name=service]")
    name.fill("Bad_Name")
    assert name.evaluate("input => input.validity.patternMismatch") is True
    name.fill("good-name-2")
    assert name.evaluate("input => input.validity.patternMismatch") is False


def test_new_invoke_stops_previous_follow(page: Page) -> None:
    # Calls of `parked` stay queued, so nothing but a new submit ends a follow.
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(path_of(request.url))

    page.goto("/ui/functions/openfaas-fn/parked")
    page.on("request", record)
    try:
        page.check("#invoke input[name=mode][value=async]")
        page.click("#invoke button[type=submit]")
        expect(page.locator("#async-call-state")).to_have_text("queued")
        first = page.locator("#async-call-id").inner_text()
        page.click("#invoke button[type=submit]")
        expect(page.locator("#async-call-id")).not_to_have_text(first)
        second = page.locator("#async-call-id").inner_text()
        expect(page.locator("#async-call-state")).to_have_text("queued")
        seen = len(requested)
        page.wait_for_timeout(2000)
        later = requested[seen:]
    finally:
        page.remove_listener("request", record)
    assert f"/async-calls/{first}" not in later
    assert f"/async-calls/{second}" in later


def test_follow_ends_after_repeated_404(page: Page, console_hub: ConsoleHub) -> None:
    # Every status request goes to the real gateway for an unknown call id,
    # which returns 404, as for a call whose status expired.
    missing = f"{console_hub.url}/async-calls/missing-{uuid.uuid4()}"

    def to_missing(route: Route) -> None:
        route.continue_(url=missing)

    def is_status(url: str) -> bool:
        return path_of(url).startswith("/async-calls/")

    page.goto("/ui/functions/openfaas-fn/parked")
    page.route(is_status, to_missing)
    try:
        page.check("#invoke input[name=mode][value=async]")
        page.click("#invoke button[type=submit]")
        state = page.locator("#async-call-state")
        expect(state).to_contain_text("stopped following", timeout=10_000)
        expect(state).to_contain_text("status 404")
    finally:
        page.unroute(is_status, to_missing)


def test_chart_ignores_counter_reset(page: Page, console_hub: ConsoleHub) -> None:
    # A gateway restart sets the counters back to zero. The first sample is
    # echo's, and later ones are parked's smaller totals.
    echo_path = "/ui/api/functions/openfaas-fn/echo/metrics"
    parked_path = "/ui/api/functions/openfaas-fn/parked/metrics"
    assert console_hub.client.post("/function/echo", content=b"c").status_code == 200
    echo_total = console_hub.client.get(echo_path).json()["total"]
    assert echo_total > console_hub.client.get(parked_path).json()["total"]
    samples: list[str] = []

    def reset_after_first(route: Route) -> None:
        samples.append(route.request.url)
        if len(samples) == 1:
            route.continue_()
        else:
            route.continue_(url=console_hub.url + parked_path)

    def is_echo_metrics(url: str) -> bool:
        return path_of(url) == echo_path

    page.route(is_echo_metrics, reset_after_first)
    try:
        page.goto("/ui/functions/openfaas-fn/echo")
        rate_line = page.locator("#chart polyline.rate")
        expect(rate_line).to_have_attribute("points", re.compile(r"\d"))
        points = rate_line.get_attribute("points") or ""
        caption = page.locator("#chart text.label").last.text_content() or ""
    finally:
        page.unroute(is_echo_metrics, reset_after_first)
    # yOf() in console.js: 130 is the time axis, 5 the top of the plot.
    heights = [float(pair.split(",")[1]) for pair in points.split()]
    assert heights
    assert all(5 <= height <= 130 for height in heights), points
    assert "-" not in caption, caption
    save_screenshot(page, "chart")


def test_purge_of_gone_letter_shows_error(page: Page, console_hub: ConsoleHub) -> None:
    call_id = f"flaky-{uuid.uuid4()}"
    response = console_hub.client.post(
        "/async-function/flaky", content=b"gone", headers={"X-Call-Id": call_id}
    )
    assert response.status_code == 202
    console_hub.wait_for_state(call_id, "dead-lettered")
    page.goto("/ui/dead-letters")
    row = page.locator(f"#dead-letters tr[data-call-id='{call_id}']")
    expect(row).to_be_visible()

    # Another user purges it while the page still lists it.
    purged = console_hub.client.delete(f"/system/dead-letters/{call_id}")
    assert purged.status_code == 200, purged.text
    row.locator("button[data-action=purge]").click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text(f"{call_id} (not found)")
    expect(notice).to_have_class("error")
    expect(row).to_have_count(0)


def raised_heights(points: str) -> list[float]:
    """Return the heights of a chart line's points above the time axis (y 130)."""
    return [130 - float(pair.split(",")[1]) for pair in points.split()]


def test_chart_plots_async_calls(page: Page, console_hub: ConsoleHub) -> None:
    page.goto("/ui/functions/openfaas-fn/echo")
    expect(page.locator("ul.legend")).to_contain_text("async calls accepted")
    expect(page.locator("#chart svg")).to_be_visible()
    for index in range(4):
        response = console_hub.client.post(
            "/async-function/echo",
            content=b"chart",
            headers={"X-Call-Id": f"chart-{uuid.uuid4()}-{index}"},
        )
        assert response.status_code == 202
    # Samples come every 2 s; the calls show in the first interval after them.
    for line_class in ("accepted", "finished"):
        line = page.locator(f"#chart polyline.{line_class}")
        heights: list[float] = []
        for _ in range(40):
            heights = raised_heights(line.get_attribute("points") or "")
            if heights and max(heights) > 0:
                break
            page.wait_for_timeout(250)
        assert heights
        assert max(heights) > 0, line_class
    caption = page.locator("#chart text.label").last.text_content() or ""
    assert "async accepted" in caption
    save_screenshot(page, "chart-async")


def test_later_page_select_all_purges_there(
    page: Page, console_hub: ConsoleHub
) -> None:
    client = console_hub.client
    with doomed_dead_letters(console_hub, DEAD_LETTERS_SHOWN + 3):
        first_page = client.get(
            "/system/dead-letters", params={"limit": DEAD_LETTERS_SHOWN}
        ).json()
        after_seq = first_page["next_after_seq"]
        everything = client.get("/system/dead-letters", params={"limit": 1000}).json()
        total = everything["count"]
        later = [item for item in everything["dead_letters"] if item["seq"] > after_seq]

        page.goto("/ui/dead-letters")
        page.click("nav.pager a[rel=next]")
        expect(page).to_have_url(re.compile(f"after_seq={after_seq}$"))
        rows = page.locator("#dead-letters tbody tr")
        expect(rows).to_have_count(len(later))
        expect(page.locator("#shown-count")).to_have_text(str(len(later)))
        expect(page.locator("#stored-count")).to_have_text(str(total))
        expect(page.locator("nav.pager a[rel=first]")).to_be_visible()

        # The header box selects this page's rows, and shows a partial
        # selection as indeterminate.
        select_page = page.locator("#select-page")
        select_page.check()
        expect(page.locator("#selected-count")).to_have_text(f"{len(later)} selected")
        rows.first.locator("input[name=selected]").uncheck()
        expect(page.locator("#selected-count")).to_have_text(
            f"{len(later) - 1} selected"
        )
        assert select_page.evaluate("box => box.indeterminate") is True
        rows.first.locator("input[name=selected]").check()
        assert select_page.evaluate("box => box.checked") is True
        save_screenshot(page, "dead-letters-later-page")

        page.click("button[data-action=purge-selected]")
        expect(page.locator("#notice")).to_have_text(
            f"Purged {len(later)} dead letter(s)."
        )
        expect(rows).to_have_count(0)
        expect(page.locator("#shown-count")).to_have_text("0")
        expect(page.locator("#stored-count")).to_have_text(str(total - len(later)))
        expect(page.locator("#selected-count")).to_have_text("0 selected")

        left = client.get("/system/dead-letters", params={"limit": 1000}).json()
        assert [item["seq"] for item in left["dead_letters"]] == [
            item["seq"] for item in first_page["dead_letters"]
        ]


def test_tick_one_of_two_rows_of_call(page: Page, console_hub: ConsoleHub) -> None:
    client = console_hub.client
    with letters_of_one_call(console_hub) as (call_id, seqs):
        call_seq, callback_seq = seqs
        # The page after call_seq - 1 starts with the two rows, however many
        # dead letters earlier tests left.
        page.goto(f"/ui/dead-letters?after_seq={call_seq - 1}")
        rows = page.locator(f"#dead-letters tr[data-call-id='{call_id}']")
        expect(rows).to_have_count(2)
        stored = int(page.locator("#stored-count").text_content() or "")

        callback_row = page.locator(f"#dead-letters tr[data-seq='{callback_seq}']")
        callback_row.locator("input[name=selected]").check()
        expect(page.locator("#selected-count")).to_have_text("1 selected")
        page.click("button[data-action=purge-selected]")

        expect(page.locator("#notice")).to_have_text("Purged 1 dead letter(s).")
        expect(rows).to_have_count(1)
        expect(page.locator(f"#dead-letters tr[data-seq='{call_seq}']")).to_be_visible()
        expect(page.locator("#stored-count")).to_have_text(str(stored - 1))
        left = client.get(f"/system/dead-letters/{call_id}")
        assert left.status_code == 200, left.text
        assert left.json()["seq"] == call_seq
        assert left.json()["kind"] == "call"
