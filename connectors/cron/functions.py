"""The scheduled functions: who subscribes to `cron-function`, with which annotations.

The shared `TopicMapBuilder` keeps only each function's `topic` annotation.
`CronFunctionsBuilder` reads the same `/system/functions` listing and also
keeps the full annotations of every function whose `topic` names
`cron-function`, so the source can parse their schedules. Its `version`
grows whenever those annotations change, even when the topic map does not.
"""

import asyncio

import aiohttp

from connectors.core.topic_map import TopicMap, TopicMapBuilder, parse_topic_annotation
from connectors.cron import constants
from faashub import constants as shared
from faashub import names


class CronFunctionsBuilder(TopicMapBuilder):
    """A topic map builder that also keeps the scheduled functions' annotations."""

    def __init__(self, gateway_url: str, *, rebuild_interval_s: float) -> None:
        super().__init__(gateway_url, rebuild_interval_s=rebuild_interval_s)
        self._init_scheduled()

    @classmethod
    def like(cls, builder: TopicMapBuilder) -> "CronFunctionsBuilder":
        """Return a builder with every option of `builder`, credentials included.

        The connector core configures its own builder; copying its state
        keeps this one in step with whatever options the core adds.
        """
        copy = cls.__new__(cls)
        vars(copy).update(vars(builder))
        copy._init_scheduled()
        return copy

    def _init_scheduled(self) -> None:
        self._scheduled: dict[names.FunctionRef, dict[str, str]] | None = None
        self._scheduled_version = 0
        self._scheduled_changed = asyncio.Event()

    @property
    def scheduled(self) -> dict[names.FunctionRef, dict[str, str]] | None:
        """Annotations of each `cron-function` subscriber; None before the first."""
        return self._scheduled

    @property
    def scheduled_version(self) -> int:
        """A number that grows by one each time `scheduled` changes."""
        return self._scheduled_version

    async def wait_for_scheduled_change(self, version: int) -> None:
        """Return once `scheduled_version` differs from `version`."""
        while self._scheduled_version == version:
            self._scheduled_changed.clear()
            await self._scheduled_changed.wait()

    async def build(self, client: aiohttp.ClientSession) -> TopicMap:
        """Read the functions; keep the scheduled ones' annotations; return the map."""
        topics: dict[names.FunctionRef, str] = {}
        scheduled: dict[names.FunctionRef, dict[str, str]] = {}
        for namespace in await self._list_namespaces(client):
            for function in await self._list_functions(client, namespace):
                annotations = function.get("annotations") or {}
                if not isinstance(annotations, dict):
                    continue
                topic = annotations.get(shared.ANNOTATION_TOPIC)
                if not isinstance(topic, str):
                    continue
                ref = self._function_ref(function, namespace)
                if ref is None:
                    continue
                topics[ref] = topic
                if constants.TOPIC in parse_topic_annotation(topic):
                    scheduled[ref] = {
                        str(name): str(value) for name, value in annotations.items()
                    }
        if scheduled != self._scheduled:
            self._scheduled = scheduled
            self._scheduled_version += 1
            self._scheduled_changed.set()
        return TopicMap.from_functions(topics)
