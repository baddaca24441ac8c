"""Paging of the console's dead-letter list, and acting on a later page or
on one dead letter of a call id that has two."""

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.dead_letter_api import MAX_AFTER_SEQ, MAX_SEQ
from gateway.ui.console import DEAD_LETTERS_SHOWN, MAX_SELECTED_IDS
from tests.ui.conftest import ConsoleHub, doomed_dead_letters, letters_of_one_call

pytestmark = pytest.mark.timeout(120)

CONSOLE_HEADERS = {"X-Faashub-Console": "1"}

ROW_SEQ = re.compile(r'<tr data-call-id="[^"]*" data-seq="(\d+)">')
NEXT_LINK = re.compile(r'<a href="/ui/dead-letters\?after_seq=(\d+)" rel="next">')
FIRST_LINK = '<a href="/ui/dead-letters" rel="first">First page</a>'


@pytest.fixture(scope="module")
def second_page(console_hub: ConsoleHub) -> Iterator[list[dict[str, Any]]]:
    """More dead letters than one page shows, so that a second page exists."""
    with doomed_dead_letters(console_hub, DEAD_LETTERS_SHOWN + 5) as made:
        yield made


def api_seqs(client: httpx.Client, *, after_seq: int) -> list[int]:
    listing = client.get(
        "/system/dead-letters",
        params={"after_seq": after_seq, "limit": DEAD_LETTERS_SHOWN},
    ).json()
    return [letter["seq"] for letter in listing["dead_letters"]]


def stored_count(client: httpx.Client) -> int:
    listing = client.get("/system/dead-letters", params={"limit": 1000}).json()
    assert listing["truncated"] is False
    return int(listing["count"])


def counts_line(page: str) -> str:
    found = re.search(r'<p id="dead-letter-counts"[^>]*>(.*?)</p>', page)
    assert found, page
    return re.sub(r"<[^>]+>", "", found.group(1))


def test_first_page_links_next(
    console_hub: ConsoleHub, second_page: list[dict[str, Any]]
) -> None:
    response = console_hub.client.get("/ui/dead-letters")
    assert response.status_code == 200
    seqs = [int(seq) for seq in ROW_SEQ.findall(response.text)]
    assert seqs == api_seqs(console_hub.client, after_seq=0)
    assert len(seqs) == DEAD_LETTERS_SHOWN
    next_link = NEXT_LINK.search(response.text)
    assert next_link is not None
    assert int(next_link.group(1)) == seqs[-1]
    assert FIRST_LINK not in response.text
    total = stored_count(console_hub.client)
    assert counts_line(response.text) == (
        f"Showing {DEAD_LETTERS_SHOWN} of {total} dead letters, oldest first."
    )


def test_next_page_lists_the_rest(
    console_hub: ConsoleHub, second_page: list[dict[str, Any]]
) -> None:
    first = console_hub.client.get("/ui/dead-letters").text
    next_link = NEXT_LINK.search(first)
    assert next_link is not None
    after_seq = int(next_link.group(1))

    response = console_hub.client.get(f"/ui/dead-letters?after_seq={after_seq}")
    assert response.status_code == 200
    seqs = [int(seq) for seq in ROW_SEQ.findall(response.text)]
    assert seqs == api_seqs(console_hub.client, after_seq=after_seq)
    assert seqs
    assert min(seqs) > after_seq
    assert FIRST_LINK in response.text
    assert NEXT_LINK.search(response.text) is None
    total = stored_count(console_hub.client)
    assert counts_line(response.text) == (
        f"Showing {len(seqs)} of {total} dead letters, oldest first, "
        f"after sequence {after_seq}."
    )


def test_page_past_the_end_is_empty(console_hub: ConsoleHub) -> None:
    response = console_hub.client.get(f"/ui/dead-letters?after_seq={MAX_AFTER_SEQ}")
    assert response.status_code == 200
    assert ROW_SEQ.search(response.text) is None
    assert f"No dead letters after sequence {MAX_AFTER_SEQ}." in response.text
    assert FIRST_LINK in response.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("after_seq=abc", "Invalid after_seq &#x27;abc&#x27;", id="word"),
        pytest.param("after_seq=-1", "Invalid after_seq &#x27;-1&#x27;", id="negative"),
        pytest.param(
            "after_seq=1.5", "Invalid after_seq &#x27;1.5&#x27;", id="decimal"
        ),
        pytest.param("after_seq=", "Invalid after_seq &#x27;&#x27;", id="empty"),
        # A superscript two: Python's str.isdigit() accepts it, int() does not.
        pytest.param("after_seq=%C2%B2", "Invalid after_seq &#x27;²&#x27;", id="super"),
        pytest.param(
            f"after_seq={MAX_AFTER_SEQ + 1}",
            f"Invalid after_seq &#x27;{MAX_AFTER_SEQ + 1}&#x27;",
            id="past-uint64",
        ),
        # Longer than the 4300 digits int() converts.
        pytest.param(
            "after_seq=" + "9" * 5000, "Invalid after_seq &#x27;9999", id="5000-digits"
        ),
        pytest.param(
            "after_seq=1&after_seq=2", "after_seq is given more than once", id="twice"
        ),
    ],
)
def test_bad_after_seq_400(console_hub: ConsoleHub, query: str, message: str) -> None:
    response = console_hub.client.get(f"/ui/dead-letters?{query}")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert message in response.text
    if "more than once" not in message:
        assert f"expected a whole number from 0 to {MAX_AFTER_SEQ}." in response.text
    assert len(response.text) < 5000


def test_purge_on_later_page_acts_there(
    console_hub: ConsoleHub, second_page: list[dict[str, Any]]
) -> None:
    client = console_hub.client
    first_seqs = api_seqs(client, after_seq=0)
    page = client.get(f"/ui/dead-letters?after_seq={first_seqs[-1]}").text
    rows = re.findall(r'<tr data-call-id="([^"]*)" data-seq="(\d+)">', page)
    selected = rows[:2]
    total = stored_count(client)

    response = client.post(
        "/ui/api/dead-letters/purge",
        json={"call_ids": [call_id for call_id, _ in selected]},
        headers={"X-Faashub-Console": "1"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert sorted(item["seq"] for item in result["purged"]) == sorted(
        int(seq) for _, seq in selected
    )
    assert result["failed"] == []
    assert result["stored"] == total - 2
    assert stored_count(client) == total - 2
    assert api_seqs(client, after_seq=0) == first_seqs


def test_purge_one_seq_of_call(console_hub: ConsoleHub) -> None:
    client = console_hub.client
    with letters_of_one_call(console_hub) as (call_id, seqs):
        call_seq, callback_seq = seqs
        total = stored_count(client)

        response = client.post(
            "/ui/api/dead-letters/purge",
            json={"seqs": [callback_seq]},
            headers=CONSOLE_HEADERS,
        )

        assert response.status_code == 200, response.text
        result = response.json()
        assert result["purged"] == [
            {"call_id": call_id, "kind": "callback", "seq": callback_seq}
        ]
        assert result["failed"] == []
        assert result["stored"] == total - 1
        left = client.get(f"/system/dead-letters/{call_id}")
        assert left.status_code == 200, left.text
        assert left.json()["seq"] == call_seq
        assert left.json()["kind"] == "call"


@pytest.mark.parametrize(
    ("action", "done_key"), [("redrive", "redriven"), ("purge", "purged")]
)
def test_missing_seq_not_found(
    console_hub: ConsoleHub, action: str, done_key: str
) -> None:
    response = console_hub.client.post(
        f"/ui/api/dead-letters/{action}",
        json={"seqs": [MAX_SEQ]},
        headers=CONSOLE_HEADERS,
    )

    assert response.status_code == 200, response.text
    result = response.json()
    assert result[done_key] == []
    assert result["failed"] == [
        {"call_id": None, "kind": None, "seq": MAX_SEQ, "error": "not found"}
    ]


@pytest.mark.parametrize(
    ("document", "named"),
    [
        pytest.param({"seqs": []}, "Invalid seqs []", id="empty"),
        pytest.param({"seqs": [0]}, "Invalid seq 0 ", id="zero"),
        pytest.param({"seqs": ["7"]}, 'Invalid seq "7" ', id="string"),
        pytest.param({"seqs": [MAX_SEQ + 1]}, f"Invalid seq {MAX_SEQ + 1} ", id="big"),
        pytest.param(
            {"seqs": list(range(1, MAX_SELECTED_IDS + 2))},
            f"seqs has {MAX_SELECTED_IDS + 1} items",
            id="too-many",
        ),
        pytest.param({"seqs": [1], "call_ids": ["a"]}, "not both", id="with-ids"),
    ],
)
def test_invalid_seqs_400(
    console_hub: ConsoleHub, document: dict[str, Any], named: str
) -> None:
    total = stored_count(console_hub.client)

    response = console_hub.client.post(
        "/ui/api/dead-letters/purge", json=document, headers=CONSOLE_HEADERS
    )

    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]
    assert stored_count(console_hub.client) == total
