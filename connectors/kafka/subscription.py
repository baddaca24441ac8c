"""The selection of topics the consumer subscribes to.

The requested entries are the `--topics` list, or with `--topics auto` every
entry of the topic map (every topic and pattern that a function's `topic`
annotation names). The consumer subscribes to:

* each requested topic name that exists in the cluster. A name that does
  not exist yet is reported as missing and subscribed once it appears,
  rather than created by the subscription;
* each topic of the cluster that a requested pattern matches, except
  internal topics (`__consumer_offsets`), dead-letter topics and the reply
  topic. Those three are only subscribed when named exactly, so `orders.*`
  does not feed `orders.dlq` back to the function that failed.

It never subscribes to `cron-function`, the cron connector's topic, which
every scheduled function names: records of a Kafka topic of that name would
otherwise invoke every scheduled function. A requested name that Kafka
cannot hold (`is_valid_topic_name`) is reported as invalid, because no
topic of that name can ever appear.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from connectors.core.topic_map import is_pattern, pattern_regex, serves_names
from connectors.cron import constants as cron_constants
from connectors.kafka import constants

_TOPIC_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{constants.MAX_TOPIC_NAME_CHARS}}}")


@dataclass(frozen=True, slots=True)
class TopicSelection:
    """The topics to subscribe to, and the requested names left out."""

    subscribed: frozenset[str]
    missing: frozenset[str]
    """Valid names that the cluster has no topic of yet."""
    invalid: frozenset[str] = frozenset()
    """Names that Kafka cannot hold."""
    reserved: frozenset[str] = frozenset()
    """Names of other connectors' topics: `cron-function`."""


def served_entries(explicit_topics: list[str]) -> Callable[[str], bool]:
    """Return a test of whether the connector consumes an annotation entry.

    With `--topics auto` (`explicit_topics` empty) it consumes every entry
    but the cron connector's topic, and otherwise those that concern the
    explicit list (`serves_names`).
    """
    if explicit_topics:
        return serves_names(explicit_topics)
    return lambda entry: entry != cron_constants.TOPIC


def is_valid_topic_name(name: str) -> bool:
    """Tell whether Kafka accepts `name` as a topic name."""
    return name not in (".", "..") and bool(_TOPIC_NAME.fullmatch(name))


def select_topics(
    requested: Iterable[str],
    cluster_topics: Iterable[str],
    *,
    dead_letter_topics: re.Pattern[str] | None,
    reply_topic: str = "",
) -> TopicSelection:
    """Match the requested names and patterns against the cluster's topics."""
    requested = list(requested)
    existing = frozenset(cluster_topics)
    names = {entry for entry in requested if not is_pattern(entry)}
    patterns = [pattern_regex(entry) for entry in requested if is_pattern(entry)]
    reserved = {name for name in names if name == cron_constants.TOPIC}
    invalid = {name for name in names - reserved if not is_valid_topic_name(name)}
    topic_names = names - reserved - invalid

    subscribed = topic_names & existing
    if patterns:
        for topic in existing - subscribed:
            if _excluded_from_patterns(
                topic, dead_letter_topics=dead_letter_topics, reply_topic=reply_topic
            ):
                continue
            if any(pattern.match(topic) for pattern in patterns):
                subscribed.add(topic)
    return TopicSelection(
        subscribed=frozenset(subscribed),
        missing=frozenset(topic_names - existing),
        invalid=frozenset(invalid),
        reserved=frozenset(reserved),
    )


def _excluded_from_patterns(
    topic: str, *, dead_letter_topics: re.Pattern[str] | None, reply_topic: str
) -> bool:
    if topic.startswith(constants.INTERNAL_TOPIC_PREFIX) or topic == reply_topic:
        return True
    if topic == cron_constants.TOPIC:
        return True
    return dead_letter_topics is not None and bool(dead_letter_topics.match(topic))
