"""The offset of a partition that may be committed.

Records of a partition finish out of order: in `key` and `none` ordering, a
later record can succeed while an earlier one still retries. Kafka keeps one
committed offset per partition, which means "every record before this one is
done". `OffsetTracker` therefore commits the lowest offset that is not final
yet, or one past the last record when all are final, so a restart never
skips a record whose outcome is not final.
"""

from collections import deque


class OffsetTracker:
    """The records of one partition from fetch to final outcome.

    Offsets are added in the order the consumer returns them, which is
    increasing. They need not be consecutive: compaction and transaction
    markers leave gaps.
    """

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._finished: set[int] = set()
        self._next_offset: int | None = None

    @property
    def pending(self) -> int:
        """Records added and not final yet."""
        return len(self._order) - len(self._finished)

    def add(self, offset: int) -> None:
        """Track a fetched record."""
        if self._order and offset <= self._order[-1]:
            raise ValueError(
                f"Offset {offset} arrived after offset {self._order[-1]}; "
                "offsets of a partition must increase."
            )
        self._order.append(offset)

    def finish(self, offset: int) -> None:
        """Mark a tracked record final (handled, or dead-lettered)."""
        self._finished.add(offset)
        order = self._order
        while order and order[0] in self._finished:
            done = order.popleft()
            self._finished.discard(done)
            self._next_offset = done + 1

    def last_final(self) -> int | None:
        """Return the highest offset that is final, or None if none is."""
        if self._finished:
            return max(self._finished)
        if self._next_offset is None:
            return None
        return self._next_offset - 1

    def committable(self) -> int | None:
        """Return the offset to commit now, or None if no record is final yet."""
        if self._order:
            first = self._order[0]
            # Records before the first pending one are final, if there are any.
            if self._next_offset is None:
                return None
            return first
        return self._next_offset
