"""The cron connector's state in NATS: tick claims and last fired ticks.

`CronState.start()` opens two key-value buckets on one NATS connection.

Tick claims (`FAASHUB_CRON_LEASES`), for sync invocation only. Every replica
computes the same ticks. Before it invokes a function synchronously for a
tick, a replica creates the key `<namespace>.<function>.<tick in Unix ms>`.
Creating fails when the key exists, so exactly one replica wins each tick
and the others skip it. The bucket's TTL removes old claims. A claim is per
tick, not a lock held over time. A replica that dies after winning a tick
may lose that one tick, because no other replica retries it. The next tick
is a new key, so any live replica can win it. When NATS cannot be reached,
the tick is not fired (a replica cannot know whether another one has it) and
the failure is logged. Async invocation needs no claim, because the gateway
drops repeated call ids.

Last fired ticks (`FAASHUB_CRON_LAST_FIRED`), for functions with the `once`
missed-run policy, in sync and async mode. The key `<namespace>.<function>`
stores the latest tick a replica fired and a fingerprint of the schedule
annotations. A connector that starts reads it, so the scheduler can fire one
catch-up run for the ticks that passed while no replica ran. A record written
for other schedule annotations is ignored, as a changed schedule starts from
the current time. The record of a removed function is deleted. When NATS
cannot be reached, the failure is logged and the run goes ahead: it can cost
a catch-up run after a restart, never a tick.
"""

import json
import logging
import time
from datetime import UTC, datetime

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from connectors.cron.schedule import Schedule
from faashub import jetstream, names

logger = logging.getLogger(__name__)

# Errors of a key-value operation while NATS is unreachable or slow.
_UNAVAILABLE = (NatsError, TimeoutError, OSError)


class CronState:
    """One replica's NATS connection and buckets; `owner` names it in claims."""

    def __init__(
        self,
        nats_url: str,
        *,
        owner: str,
        claim_ticks: bool,
        lease_ttl_s: float,
        token: str | None = None,
    ) -> None:
        self._nats_url = nats_url
        self._token = token
        self._owner = owner
        self._claim_ticks = claim_ticks
        self._lease_ttl_s = lease_ttl_s
        self._client: Client | None = None
        self._leases: KeyValue | None = None
        self._last_fired: KeyValue | None = None
        self._outage_started_s: float | None = None
        self._closing = False

    @property
    def claims_ticks(self) -> bool:
        """Whether this replica claims each tick before it fires (sync mode)."""
        return self._claim_ticks

    async def start(self) -> None:
        """Connect to NATS and open (or create) the buckets.

        The client reconnects on its own afterwards, without a limit.
        """
        self._closing = False
        self._client = await nats.connect(
            self._nats_url,
            name=f"faashub-cron-{self._owner}",
            token=self._token,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            # Without these callbacks nats-py logs every failed reconnect at
            # ERROR with a traceback, where one line per outage is enough.
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        js = self._client.jetstream()
        if self._claim_ticks:
            self._leases = await jetstream.ensure_cron_lease_bucket(
                js, ttl_s=self._lease_ttl_s
            )
        self._last_fired = await jetstream.ensure_cron_last_fired_bucket(js)
        logger.info(
            "cron state in NATS ready",
            extra={
                "ctx": {
                    "nats_url": self._nats_url,
                    "owner": self._owner,
                    "claim_ticks": self._claim_ticks,
                }
            },
        )

    async def _on_error(self, exc: Exception) -> None:
        self._begin_outage(jetstream.describe_nats_error(exc))

    async def _on_disconnected(self) -> None:
        self._begin_outage("disconnected")

    async def _on_reconnected(self) -> None:
        if self._outage_started_s is None:
            return
        lasted_s = time.monotonic() - self._outage_started_s
        self._outage_started_s = None
        logger.info(
            "cron state in NATS available again after %.1f s",
            lasted_s,
            extra={"ctx": {"owner": self._owner}},
        )

    def _begin_outage(self, reason: str) -> None:
        if self._outage_started_s is not None or self._closing:
            return
        self._outage_started_s = time.monotonic()
        logger.warning(
            "cron state in NATS unavailable, reconnecting: %s",
            reason,
            extra={"ctx": {"owner": self._owner}},
        )

    async def close(self) -> None:
        """Close the NATS connection."""
        # nats-py calls disconnected_cb on a close too.
        self._closing = True
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._leases = None
            self._last_fired = None

    async def claim(self, function: names.FunctionRef, tick: datetime) -> bool:
        """Claim `tick` of `function`; return whether this replica won it.

        Returns False, after logging, when NATS cannot be reached.
        """
        if self._leases is None:
            raise RuntimeError(
                "CronState.claim() needs start() with claim_ticks=True first."
            )
        key = lease_key(function, tick)
        try:
            await self._leases.create(key, self._owner.encode())
        except KeyWrongLastSequenceError:
            return False
        except _UNAVAILABLE as exc:
            logger.warning(
                "tick not fired: cannot claim it in NATS",
                extra={
                    "ctx": {"function": str(function), "key": key, "error": repr(exc)}
                },
            )
            return False
        return True

    async def read_last_fired(
        self, function: names.FunctionRef, schedule: Schedule
    ) -> datetime | None:
        """Return the last tick fired for this `schedule` of `function`.

        Returns None when there is no record, when the record belongs to other
        schedule annotations, or, after logging, when it cannot be read.
        """
        bucket = self._started_last_fired()
        key = last_fired_key(function)
        context = {"function": str(function), "key": key}
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            return None
        except _UNAVAILABLE as exc:
            logger.warning(
                "no catch-up after restart: cannot read the last fired tick",
                extra={"ctx": {**context, "error": repr(exc)}},
            )
            return None
        try:
            record = json.loads(entry.value or b"")
            tick_ms = int(record["tick_ms"])
            fingerprint = str(record["schedule"])
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning(
                "no catch-up after restart: invalid last fired record",
                extra={"ctx": {**context, "error": repr(exc)}},
            )
            return None
        if fingerprint != schedule.fingerprint():
            return None
        return datetime.fromtimestamp(tick_ms / 1000, UTC)

    async def record_fired(
        self, function: names.FunctionRef, schedule: Schedule, tick: datetime
    ) -> None:
        """Store `tick` as the last one fired for `function`; log a failure."""
        bucket = self._started_last_fired()
        key = last_fired_key(function)
        record = {
            "tick_ms": round(tick.timestamp() * 1000),
            "scheduled_at": tick.astimezone(UTC).isoformat(),
            "schedule": schedule.fingerprint(),
            "owner": self._owner,
        }
        try:
            await bucket.put(key, json.dumps(record).encode())
        except _UNAVAILABLE as exc:
            logger.warning(
                "last fired tick not stored: a restart may miss its catch-up run",
                extra={
                    "ctx": {"function": str(function), "key": key, "error": repr(exc)}
                },
            )

    async def forget(self, function: names.FunctionRef) -> None:
        """Delete the last fired record of a function that is no longer scheduled."""
        bucket = self._started_last_fired()
        key = last_fired_key(function)
        try:
            await bucket.delete(key)
        except _UNAVAILABLE as exc:
            logger.warning(
                "cannot delete the last fired record of a removed function",
                extra={
                    "ctx": {"function": str(function), "key": key, "error": repr(exc)}
                },
            )

    def _started_last_fired(self) -> KeyValue:
        if self._last_fired is None:
            raise RuntimeError("CronState.start() must run first.")
        return self._last_fired


def lease_key(function: names.FunctionRef, tick: datetime) -> str:
    """Return the claim key of a function's tick."""
    tick_ms = round(tick.timestamp() * 1000)
    return f"{function.namespace}.{function.name}.{tick_ms}"


def last_fired_key(function: names.FunctionRef) -> str:
    """Return the key of a function's last fired tick."""
    return f"{function.namespace}.{function.name}"
