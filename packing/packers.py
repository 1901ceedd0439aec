"""Bin packing of sample lengths into sequences of capacity L, streaming over a bounded window.

lengths (a stream) → bins (lists of stream indices). Every packer sees the stream in windows of W samples
(W = 0: the whole set at once). Bins still open after a window are kept while they are among the `carry`
emptiest ones, so the next window can top them up; all others are emitted. Memory is O(W + carry).

Packers (registry `PACKERS`): `best_fit_decreasing` (sorted descending, each item into the open bin with the
least room that fits it; bisect over a sorted key list, O(n log n)), `first_fit_decreasing` (the oldest
bin that fits), `greedy` (next-fit in arrival order, the baseline).
"""
from __future__ import annotations

import bisect
from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from vlmloom.schemas.registry import Registry

PACKERS: Registry[type["Packer"]] = Registry("packer")
_SHIFT = 32  # key = remaining << 32 | bin id: sorting keys sorts bins by remaining room, then age


class Packer:
    """Open bins and the rule that places one window of items into them."""
    sorts = True  # place items longest first

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: dict[int, list[int]] = {}  # bin id → stream indices
        self.room: dict[int, int] = {}  # bin id → remaining capacity
        self.next_id = 0

    def _new_bin(self) -> int:
        b = self.next_id
        self.next_id += 1
        self.items[b], self.room[b] = [], self.capacity
        return b

    def place(self, sizes: list[int], indices: list[int]) -> None:
        raise NotImplementedError

    def close(self, keep: int) -> list[list[int]]:
        """Emit all open bins but the `keep` emptiest (oldest first among equals); emitted in bin-id order."""
        order = sorted(self.room, key=lambda b: (-self.room[b], b))
        kept = set(order[:keep]) if keep > 0 else set()
        out = []
        for b in sorted(self.room):
            if b not in kept and self.items[b]:
                out.append(sorted(self.items[b]))
                del self.items[b], self.room[b]
        self._reindex()
        return out

    def _reindex(self) -> None:
        pass


@PACKERS.register("best_fit_decreasing")
class BestFitDecreasing(Packer):
    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.keys: list[int] = []  # sorted (room << 32 | bin id)

    def _reindex(self) -> None:
        self.keys = sorted((r << _SHIFT) | b for b, r in self.room.items())

    def place(self, sizes: list[int], indices: list[int]) -> None:
        keys, items, room = self.keys, self.items, self.room
        mask = (1 << _SHIFT) - 1
        for size, index in zip(sizes, indices):
            pos = bisect.bisect_left(keys, size << _SHIFT)
            if pos < len(keys):
                b = keys.pop(pos) & mask
            else:
                b = self._new_bin()
            items[b].append(index)
            r = room[b] - size
            room[b] = r
            bisect.insort(keys, (r << _SHIFT) | b)


@PACKERS.register("first_fit_decreasing")
class FirstFitDecreasing(Packer):
    def __init__(self, capacity: int):
        super().__init__(capacity)
        self.ids = np.zeros(0, np.int64)
        self.rooms = np.zeros(0, np.int64)

    def _reindex(self) -> None:
        self.ids = np.array(sorted(self.room), np.int64)
        self.rooms = np.array([self.room[b] for b in self.ids.tolist()], np.int64)

    def place(self, sizes: list[int], indices: list[int]) -> None:
        for size, index in zip(sizes, indices):
            fits = np.flatnonzero(self.rooms >= size) if self.rooms.size else ()
            if len(fits):
                j = int(fits[0])
            else:
                b = self._new_bin()
                self.ids = np.append(self.ids, b)
                self.rooms = np.append(self.rooms, self.capacity)
                j = self.ids.size - 1
            b = int(self.ids[j])
            self.items[b].append(index)
            self.rooms[j] -= size
            self.room[b] = int(self.rooms[j])


@PACKERS.register("greedy")
class Greedy(Packer):
    sorts = False
    current = -1

    def place(self, sizes: list[int], indices: list[int]) -> None:
        current = self.current if self.current in self.room else self._new_bin()
        for size, index in zip(sizes, indices):
            if self.room[current] < size:
                current = self._new_bin()
            self.items[current].append(index)
            self.room[current] -= size
        self.current = current

    def close(self, keep: int) -> list[list[int]]:
        # Next-fit only ever fills its newest bin: every other bin is final.
        out = [sorted(self.items.pop(b)) for b in sorted(self.room) if b != self.current or keep == 0]
        self.room = {b: r for b, r in self.room.items() if b in self.items}
        return [b for b in out if b]


def plan_bins(lengths: Iterable[int], capacity: int, *, packer: str = "best_fit_decreasing",
              window: int = 16384, carry: int = 64) -> Iterator[list[int]]:
    """Yield bins (sorted stream indices, sum of lengths ≤ capacity) covering every item exactly once.

    window: items per placement round (0 = all at once); carry: open bins kept between rounds.
    Raises ValueError on an item longer than `capacity` (filter over-long samples first).
    """
    state = PACKERS.get(packer)(capacity)
    stream = iter(lengths)
    start = 0
    while True:
        chunk = np.fromiter(stream if window <= 0 else islice(stream, window), dtype=np.int64)
        if chunk.size == 0:
            break
        if chunk.max() > capacity or chunk.min() <= 0:
            bad = int(np.flatnonzero((chunk > capacity) | (chunk <= 0))[0])
            raise ValueError(f"item {start + bad} has length {int(chunk[bad])}, outside 1..{capacity}")
        order = np.argsort(-chunk, kind="stable") if state.sorts else np.arange(chunk.size)
        state.place(chunk[order].tolist(), (order + start).tolist())
        start += chunk.size
        yield from state.close(keep=carry)
        if window <= 0:
            break
    yield from state.close(keep=0)
