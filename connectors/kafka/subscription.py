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
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from connectors.core.topic_map import is_pattern, pattern_regex
from connectors.kafka import constants


@dataclass(frozen=True, slots=True)
class TopicSelection:
    """The topics to subscribe to, and the requested names not in the cluster."""

    subscribed: frozenset[str]
    missing: frozenset[str]


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
    topic_names = {entry for entry in requested if not is_pattern(entry)}
    patterns = [pattern_regex(entry) for entry in requested if is_pattern(entry)]

    subscribed = topic_names & existing
    if patterns:
        for topic in existing - subscribed:
            if _excluded_from_patterns(
                topic, dead_letter_topics=dead_letter_topics, reply_topic=reply_topic
            ):
                continue
            if any(pattern.match(topic) for pattern in patterns):
                subscribed.add(topic)
    return TopicSelection(frozenset(subscribed), frozenset(topic_names - existing))


def _excluded_from_patterns(
    topic: str, *, dead_letter_topics: re.Pattern[str] | None, reply_topic: str
) -> bool:
    if topic.startswith(constants.INTERNAL_TOPIC_PREFIX) or topic == reply_topic:
        return True
    return dead_letter_topics is not None and bool(dead_letter_topics.match(topic))
