"""Tune CPython's cyclic garbage collector for a long-running server process.

Every faashub process builds most of its objects at start-up (modules,
settings, clients, apps) and then allocates short-lived objects per call.
With CPython's defaults, each collection of the oldest generation walks all
of the start-up objects again. Under the async-accept benchmark (64
connections, 2-core VM, Python 3.11) the gateway ran such a collection
about once a second, each a pause of about 30 ms, which set the p99 of
every connection.

`tune_gc()` collects once, freezes what survives, so that no later
collection scans it, and raises the youngest generation's threshold. It is
for a process's serving phase: call it once, after start-up, from the
process's entry point, never from a library or a test.
"""

import gc
import logging

logger = logging.getLogger(__name__)

# Allocations of container objects, net of deallocations, between two
# collections of the youngest generation (CPython's default is 700). A call
# frees nearly all it allocates, so a larger threshold rarely fills and
# promotes fewer in-flight objects to the older generations.
GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Freeze the objects that exist now, and raise the gen0 threshold.

    Frozen objects are never scanned again and reference counting still
    frees them, but a reference cycle among them is never collected.
    """
    gc.collect()
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, *older)
    logger.debug(
        "tuned garbage collector",
        extra={"ctx": {"frozen": gc.get_freeze_count(), "gen0": GEN0_THRESHOLD}},
    )
