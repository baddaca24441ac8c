"""The topic map: which functions a message on a topic goes to.

A function subscribes to topics with its `topic` annotation, a comma-separated
list (`topic: orders,payments`). Each entry is trimmed; empty entries are
ignored. An entry that contains a glob character (`*`, `?` or `[`) is a
pattern: `orders.*` subscribes to `orders.created`, `orders.paid` and any
later topic that matches. Kafka, SQS and cron names cannot contain these
characters, so an entry is never both a name and a pattern.

`TopicMapBuilder` reads the map from the gateway with aiohttp: `GET
/system/namespaces`, then `GET /system/functions?namespace=NS` for each
namespace. It refreshes the map every rebuild interval and logs each
function added to or removed from a topic. When the gateway cannot be
reached or returns something unusable, the builder keeps the last good map
and logs a warning. It tries again for as long as it runs. Connectors wait for the
first map before they consume anything.

This module does not invoke functions (see `connectors.core.invoker`) and
does not subscribe to brokers; each source turns the map into its own
subscription.
"""

import asyncio
import fnmatch
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from connectors.core import constants, errors
from connectors.core.outage import Outage
from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import names
from faashub.logs import LimitedWarning

logger = logging.getLogger(__name__)

_GLOB_CHARACTERS = frozenset("*?[")


def parse_topic_annotation(value: str) -> list[str]:
    """Split a `topic` annotation into its entries, trimmed, without repeats."""
    entries: list[str] = []
    for entry in value.split(constants.TOPIC_DELIMITER):
        entry = entry.strip()
        if entry and entry not in entries:
            entries.append(entry)
    return entries


def is_pattern(entry: str) -> bool:
    """Tell whether a topic entry is a glob pattern rather than a topic name."""
    return not _GLOB_CHARACTERS.isdisjoint(entry)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob pattern into a regular expression that matches whole names."""
    return re.compile(fnmatch.translate(pattern))


class TopicMap:
    """An immutable map from topic entries (names and patterns) to functions.

    `functions_for(topic)` returns the functions subscribed to the topic by
    name or by a matching pattern, sorted, each once. Results are cached per
    topic, which is safe because the map never changes; the builder makes a
    new map instead.
    """

    def __init__(self, entries: Mapping[str, Iterable[names.FunctionRef]]) -> None:
        self._entries = {
            entry: frozenset(functions)
            for entry, functions in entries.items()
            if functions
        }
        self._patterns = [
            (pattern_regex(entry), functions)
            for entry, functions in self._entries.items()
            if is_pattern(entry)
        ]
        self._cache: dict[str, tuple[names.FunctionRef, ...]] = {}

    @classmethod
    def from_functions(cls, annotations: Mapping[names.FunctionRef, str]) -> "TopicMap":
        """Build a map from each function's `topic` annotation value."""
        entries: dict[str, set[names.FunctionRef]] = {}
        for function, annotation in annotations.items():
            for entry in parse_topic_annotation(annotation):
                entries.setdefault(entry, set()).add(function)
        return cls(entries)

    @property
    def entries(self) -> Mapping[str, frozenset[names.FunctionRef]]:
        """The annotation entries (names and patterns) and their functions."""
        return self._entries

    @property
    def topic_names(self) -> frozenset[str]:
        """The entries that are plain topic names."""
        return frozenset(entry for entry in self._entries if not is_pattern(entry))

    @property
    def patterns(self) -> frozenset[str]:
        """The entries that are glob patterns."""
        return frozenset(entry for entry in self._entries if is_pattern(entry))

    def functions_for(self, topic: str) -> tuple[names.FunctionRef, ...]:
        """Return the functions subscribed to `topic`, by name or by pattern."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        found = set(self._entries.get(topic, ()))
        if not is_pattern(topic):
            for regex, functions in self._patterns:
                if regex.match(topic):
                    found.update(functions)
        result = tuple(sorted(found))
        self._cache[topic] = result
        return result

    def changes_since(
        self, previous: "TopicMap"
    ) -> list[tuple[str, str, names.FunctionRef]]:
        """Return ("added" or "removed", entry, function) for every difference."""
        changes: list[tuple[str, str, names.FunctionRef]] = []
        for entry in sorted(self._entries.keys() | previous._entries.keys()):
            now = self._entries.get(entry, frozenset())
            before = previous._entries.get(entry, frozenset())
            changes.extend(
                ("added", entry, function) for function in sorted(now - before)
            )
            changes.extend(
                ("removed", entry, function) for function in sorted(before - now)
            )
        return changes

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopicMap):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __repr__(self) -> str:
        listed = ", ".join(
            f"{entry}: {','.join(str(function) for function in sorted(functions))}"
            for entry, functions in sorted(self._entries.items())
        )
        return f"TopicMap({{{listed}}})"


EMPTY = TopicMap({})


def _every_entry(entry: str) -> bool:
    return True


def serves_names(consumed: Iterable[str]) -> Callable[[str], bool]:
    """Return a test of whether an annotation entry concerns `consumed`.

    `consumed` lists the topic or queue names and patterns that a connector
    consumes. An entry concerns them when it is one of them, when it is a
    name that one of the patterns matches, or when it is a pattern that
    matches one of the names.
    """
    consumed = frozenset(consumed)
    consumed_names = [item for item in consumed if not is_pattern(item)]
    consumed_patterns = [pattern_regex(item) for item in consumed if is_pattern(item)]

    def serves(entry: str) -> bool:
        if entry in consumed:
            return True
        if is_pattern(entry):
            regex = pattern_regex(entry)
            return any(regex.match(name) for name in consumed_names)
        return any(regex.match(entry) for regex in consumed_patterns)

    return serves


class TopicMapBuilder:
    """Keeps a `TopicMap` in step with the functions that the gateway lists.

    `run()` builds the map at once, then every `rebuild_interval_s`, until it
    is cancelled. Until the first map exists, failed attempts are repeated
    sooner, from half a second up to the interval. `current` is the last
    good map, or None before the first one.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        rebuild_interval_s: float,
        request_timeout_s: float = constants.SYSTEM_REQUEST_TIMEOUT_S,
        authorization: str = "",
        connector: str = "",
    ) -> None:
        self._gateway_url = gateway_url.rstrip("/")
        # The owning connector's short name for the map's log lines, because
        # every connector of a hub logs the same function changes.
        self._log_context: dict[str, object] = (
            {"connector": connector} if connector else {}
        )
        # Whether the owning connector consumes an entry. Changes to the
        # entries of other connectors are logged at DEBUG, so that each change
        # gets one INFO line from the connector it concerns.
        self.serves: Callable[[str], bool] = _every_entry
        # The Authorization header value for the gateway's /system API, or "".
        self._authorization = authorization
        self._rebuild_interval_s = rebuild_interval_s
        self._request_timeout_s = request_timeout_s
        self._current: TopicMap | None = None
        self._version = 0
        self._changed = asyncio.Event()
        self._outage = Outage("gateway", consequence="keeping the last topic map")
        self._rejections = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        self._skipped_functions: set[str] = set()

    def _consequence(self) -> str:
        if self._current is None:
            return "no topic map yet, so no function is invoked"
        return "keeping the last topic map"

    @property
    def current(self) -> TopicMap | None:
        """The last map built, or None before the first one."""
        return self._current

    @property
    def version(self) -> int:
        """A number that grows by one each time the map changes."""
        return self._version

    async def run(self) -> None:
        """Build the map now and after every interval, until cancelled."""
        retry_wait_s = constants.FIRST_MAP_RETRY_MIN_S
        started_s = time.monotonic()
        # A session of its own, so that slow invocations holding connections
        # never delay a refresh.
        headers = {"Authorization": self._authorization} if self._authorization else {}
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._request_timeout_s),
            headers=headers,
        ) as client:
            while True:
                try:
                    self._install(await self.build(client))
                except errors.TopicMapError as exc:
                    starting = (
                        self._current is None
                        and time.monotonic() - started_s < constants.START_GRACE_S
                    )
                    if isinstance(exc, errors.CredentialsRejected):
                        # A gateway that responds is up, so this is no outage,
                        # and no grace for a gateway still starting applies.
                        self._rejections.warning(
                            "%s; %s, retrying",
                            exc,
                            self._consequence(),
                            ctx=self._log_context,
                        )
                    elif starting:
                        # `faashub up` starts the gateway and the connectors
                        # together: a gateway still starting is no outage.
                        logger.debug("gateway not reachable yet: %s", exc)
                    else:
                        self._outage.begin(str(exc), consequence=self._consequence())
                    if self._current is None and starting:
                        # `faashub up` starts the gateway at the same time, and
                        # the connector is not ready before it has this map.
                        await asyncio.sleep(constants.FIRST_MAP_START_RETRY_S)
                        continue
                    if self._current is None:
                        await asyncio.sleep(retry_wait_s)
                        retry_wait_s = min(retry_wait_s * 2, self._rebuild_interval_s)
                        continue
                else:
                    self._outage.end()
                await asyncio.sleep(self._rebuild_interval_s)

    async def wait_until_built(self) -> TopicMap:
        """Wait for the first map and return the current one."""
        while self._current is None:
            await self.wait_for_change(self._version)
        return self._current

    async def wait_for_change(self, version: int) -> None:
        """Return once the map's version differs from `version`."""
        while self._version == version:
            self._changed.clear()
            await self._changed.wait()

    async def build(self, client: aiohttp.ClientSession) -> TopicMap:
        """Read every function's annotations from the gateway; raise TopicMapError."""
        annotations: dict[names.FunctionRef, str] = {}
        for namespace in await self._list_namespaces(client):
            for function in await self._list_functions(client, namespace):
                function_annotations = function.get("annotations") or {}
                if not isinstance(function_annotations, dict):
                    continue
                topic = function_annotations.get(shared.ANNOTATION_TOPIC)
                if not isinstance(topic, str):
                    continue
                ref = self._function_ref(function, namespace)
                if ref is not None:
                    annotations[ref] = topic
        return TopicMap.from_functions(annotations)

    def _install(self, topic_map: TopicMap) -> None:
        previous = self._current
        if previous is not None and topic_map == previous:
            return
        if previous is None:
            logger.info(
                "topic map built",
                extra={
                    "ctx": {
                        **self._log_context,
                        "topics": len(topic_map.entries),
                        "functions": len(set().union(*topic_map.entries.values())),
                    }
                },
            )
        for change, entry, function in topic_map.changes_since(previous or EMPTY):
            logger.log(
                logging.INFO if self.serves(entry) else logging.DEBUG,
                "function %s topic",
                "added to" if change == "added" else "removed from",
                extra={
                    "ctx": {
                        **self._log_context,
                        "function": str(function),
                        "topic": entry,
                    }
                },
            )
        self._current = topic_map
        self._version += 1
        self._changed.set()

    async def _list_namespaces(self, client: aiohttp.ClientSession) -> list[str]:
        status, listed = await self._get_json(client, "/system/namespaces")
        if status in (404, 501):
            # A provider without namespace support serves only the default one.
            return [shared.DEFAULT_NAMESPACE]
        if not isinstance(listed, list) or not all(
            isinstance(namespace, str) for namespace in listed
        ):
            raise errors.TopicMapError(
                "GET /system/namespaces returned JSON that is not a list of names."
            )
        return listed or [shared.DEFAULT_NAMESPACE]

    async def _list_functions(
        self, client: aiohttp.ClientSession, namespace: str
    ) -> list[dict[str, Any]]:
        path = "/system/functions"
        status, listed = await self._get_json(
            client, path, params={"namespace": namespace}
        )
        if status != 200:
            raise errors.TopicMapError(
                f"GET {path}?namespace={namespace} returned HTTP {status}."
            )
        if not isinstance(listed, list) or not all(
            isinstance(function, dict) for function in listed
        ):
            raise errors.TopicMapError(
                f"GET {path}?namespace={namespace} returned JSON that is not a "
                "list of functions."
            )
        return listed

    def _function_ref(
        self, function: dict[str, Any], namespace: str
    ) -> names.FunctionRef | None:
        name = function.get("name")
        function_namespace = function.get("namespace") or namespace
        try:
            if not isinstance(name, str) or not isinstance(function_namespace, str):
                raise shared_errors.InvalidFunctionName(
                    f"Invalid function entry {function!r}: name and namespace "
                    "must be strings."
                )
            names.validate_label(name)
            names.validate_label(function_namespace, what="namespace")
        except shared_errors.InvalidFunctionName as exc:
            # Logged once per entry, since every refresh finds it again.
            if str(exc) not in self._skipped_functions:
                self._skipped_functions.add(str(exc))
                logger.warning("function skipped: %s", exc)
            return None
        return names.FunctionRef(name, function_namespace)

    async def _get_json(
        self,
        client: aiohttp.ClientSession,
        path: str,
        *,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """GET a path; return (200, parsed JSON), or (404 or 501, None).

        Raise TopicMapError for any other status, a transport error or a body
        that is not JSON.
        """
        url = self._gateway_url + path
        try:
            async with client.get(
                url, params=params, allow_redirects=False
            ) as response:
                if response.status in (404, 501):
                    return response.status, None
                if response.status in (401, 403):
                    # The gateway's text is meant for CLI users (`faashub
                    # login`), and login does not configure a connector.
                    raise errors.CredentialsRejected(
                        f"the gateway rejected the connector's credentials: GET "
                        f"{path} returned HTTP {response.status}. Set "
                        "--gateway-secret-mount-path (or --gateway-user and "
                        "--gateway-password) to the gateway's basic-auth "
                        "credentials"
                    )
                if response.status != 200:
                    text = (await response.text(errors="replace"))[:200].strip()
                    raise errors.TopicMapError(
                        f"GET {url} returned HTTP {response.status}: {text!r}"
                    )
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise errors.TopicMapError(
                f"GET {url} failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        try:
            return 200, json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise errors.TopicMapError(
                f"GET {url} returned invalid JSON: {exc}"
            ) from exc
