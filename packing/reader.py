"""Streaming reader of packed shards with a shuffle buffer and exact resume (torch `IterableDataset`).

packed DIR(s) or .tar paths → one dict per packed sequence::

    {"key": str, "input_ids": int32[L], "labels": int32[L], "position_ids": int32[4, L],
     "seq_lens": int32[n], "image_grid_thw": int32[m, 3], "images": list[bytes]}

Split: rank r reads shards r, r+W, r+2W, … (W = world_size); dataloader worker j of k reads every k-th
of those. Where a level has fewer shards than readers (the demo's one shard under 2 workers; 8 ranks × 2
workers on 8 shards), that level splits by sequence instead: its readers all walk the same shards and
reader s of n keeps the sequences whose position in the epoch's stream is s mod n. Sequence p goes to rank
p mod W, as the pack step lays out its rank streams. A reader whose share is empty ends instead of
re-reading nothing forever, so a DataLoader drops that worker and goes on with the others.
Shuffle: the rank's shard order is permuted per epoch and a buffer of `shuffle_buffer` sequences
is sampled from; both RNGs are seeded by (seed, epoch[, worker]) and *not* by rank, so ranks with equally
long shard lists stay step-aligned (what the pack step's compute balancing relies on).
Resume: `state_dict()` is (epoch, shard cursor, entry cursor, stream position, buffer as (shard, entry)
references, RNG); `load_state_dict()` re-reads the buffered entries, so the stream continues exactly. Works
with torchdata's `StatefulDataLoader`, which keeps one state per worker.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from vlmloom.schemas import packed

from .shards import decode_entry, iter_tar_entries

STATE_VERSION = 1


def resolve_shards(dirs_or_shards) -> list[str]:
    items = [dirs_or_shards] if isinstance(dirs_or_shards, (str, os.PathLike)) else list(dirs_or_shards)
    shards: list[str] = []
    for item in map(str, items):
        if os.path.isdir(item):
            if not packed.is_finished(item):
                marker = os.path.basename(packed.success_path(item))
                raise ValueError(f"{item}: no {marker}; the pack job did not finish")
            shards.extend(packed.shard_paths(item))
        elif item.endswith(".tar") and os.path.isfile(item):
            shards.append(item)
        else:
            raise ValueError(f"{item}: neither a packed directory nor a .tar shard")
    if not shards:
        raise ValueError(f"no packed shards in {items}")
    return shards


class PackedDataset(torch.utils.data.IterableDataset):
    def __init__(self, dirs_or_shards, *, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0,
                 world_size: int = 1, epochs: int | None = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.shards = resolve_shards(dirs_or_shards)
        self.shuffle_buffer, self.seed = int(shuffle_buffer), int(seed)
        self.rank, self.world_size, self.epochs = rank, world_size, epochs
        self._resume: dict | None = None
        self._live: dict | None = None

    # ------------------------------------------------------------------------------------------
    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def _worker_shards(self, epoch: int, worker: int, num_workers: int) -> tuple[list[str], int, int]:
        """(shards this reader walks, its slot, slots): it keeps the sequences at stream position ≡ slot mod slots.

        Each level (ranks, then the rank's workers) splits by shard while it has at least one shard per reader,
        else by sequence, so no reader is left with nothing to read while others work.
        """
        if len(self.shards) >= self.world_size:
            shards, slot, slots = self.shards[self.rank::self.world_size], 0, 1
        else:
            shards, slot, slots = list(self.shards), self.rank, self.world_size
        if self.shuffle_buffer > 0:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(shards))
            shards = [shards[i] for i in perm]
        if len(shards) >= num_workers:
            return shards[worker::num_workers], slot, slots
        # position p goes to rank p mod W, and the rank's own i-th sequence (p // W) to worker i mod k
        return shards, slot + slots * worker, slots * num_workers

    def _rng(self, epoch: int, worker: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, worker, 0x5EED])

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = self._worker()
        state = self._resume
        self._resume = None
        if state is not None:
            self._check(state, worker, num_workers)
            epoch = state["epoch"]
        else:
            epoch = 0
        while self.epochs is None or epoch < self.epochs:
            shards, slot, slots = self._worker_shards(epoch, worker, num_workers)
            rng = self._rng(epoch, worker)
            buffer: list[tuple[tuple[int, int], dict]] = []
            shard_pos, entry, position = 0, 0, 0
            fresh = state is None  # a whole epoch is read, not the rest of a resumed one
            if state is not None:
                rng.bit_generator.state = state["rng"]
                shard_pos, entry = state["shard_pos"], state["entry"]
                position = state.get("position", 0)  # absent from states of readers that split by shard only
                buffer = self._reload(shards, [tuple(r) for r in state["buffer"]])
                state = None
            live = self._live = {"epoch": epoch, "shard_pos": shard_pos, "entry": entry, "position": position,
                                 "buffer": buffer, "rng": rng, "worker": worker, "num_workers": num_workers}
            kept = 0
            while shard_pos < len(shards):
                base = live["position"] - entry  # stream position of this shard's first sequence
                for index, key, members in iter_tar_entries(shards[shard_pos], skip=entry):
                    live["entry"], live["position"] = index + 1, base + index + 1
                    if (base + index) % slots != slot:
                        continue  # another reader's sequence
                    kept += 1
                    item = decode_entry(key, members)
                    if self.shuffle_buffer <= 0:
                        yield item
                    elif len(buffer) < self.shuffle_buffer:
                        buffer.append(((shard_pos, index), item))
                    else:
                        k = int(rng.integers(len(buffer)))
                        out = buffer[k][1]
                        buffer[k] = ((shard_pos, index), item)
                        yield out
                shard_pos, entry = shard_pos + 1, 0
                live["shard_pos"], live["entry"] = shard_pos, 0
            while buffer:
                k = int(rng.integers(len(buffer)))
                out = buffer[k][1]
                buffer[k] = buffer[-1]
                buffer.pop()
                yield out
            if fresh and kept == 0:
                # every epoch would be as empty as this one: end rather than spin (epochs=None) on nothing
                return
            epoch += 1
            live["epoch"], live["shard_pos"], live["entry"], live["position"] = epoch, 0, 0, 0
            live["rng"] = self._rng(epoch, worker)

    def _reload(self, shards: list[str], refs: list[tuple[int, int]]) -> list[tuple[tuple[int, int], dict]]:
        wanted: dict[int, set[int]] = {}
        for shard_pos, index in refs:
            wanted.setdefault(shard_pos, set()).add(index)
        found: dict[tuple[int, int], dict] = {}
        for shard_pos, indices in wanted.items():
            for index, key, members in iter_tar_entries(shards[shard_pos], skip=min(indices)):
                if index in indices:
                    found[(shard_pos, index)] = decode_entry(key, members)
                if index >= max(indices):
                    break
        return [(ref, found[ref]) for ref in refs]

    def _check(self, state: dict, worker: int, num_workers: int) -> None:
        expected = {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
                    "worker": worker, "num_workers": num_workers, "seed": self.seed,
                    "shuffle_buffer": self.shuffle_buffer, "num_shards": len(self.shards)}
        for name, value in expected.items():
            if state.get(name) != value:
                raise ValueError(f"PackedDataset state: {name} is {state.get(name)!r}, this reader has {value!r}")

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where this reader (this worker's copy, under a DataLoader) stands: resume continues after the
        last sequence it yielded."""
        if self._live is None:
            if self._resume is not None:
                return dict(self._resume)
            worker, num_workers = self._worker()
            live = {"epoch": 0, "shard_pos": 0, "entry": 0, "position": 0, "buffer": [],
                    "rng": self._rng(0, worker), "worker": worker, "num_workers": num_workers}
        else:
            live = self._live
        return {
            "version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
            "worker": live["worker"], "num_workers": live["num_workers"], "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer, "num_shards": len(self.shards),
            "epoch": live["epoch"], "shard_pos": live["shard_pos"], "entry": live["entry"],
            "position": live["position"], "buffer": [list(ref) for ref, _ in live["buffer"]],
            "rng": live["rng"].bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)
        self._live = None
