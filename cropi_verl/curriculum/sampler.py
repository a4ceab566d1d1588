"""A stateful sampler over the selected subset: yields dataset row positions, reshuffled every epoch.

Epoch e yields ``positions[perm_e]`` where ``perm_e = randperm(len(positions), generator=seed + e)``. Its state is
(epoch, number yielded in the epoch); ``torchdata``'s ``StatefulDataLoader`` saves it with the loader
(``data.pt`` in verl) and a restored sampler continues from the same position.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class RankedSubsetSampler(Sampler[int]):
    def __init__(self, positions: Sequence[int], seed: int = 0) -> None:
        if len(positions) == 0:
            raise ValueError("RankedSubsetSampler needs at least one selected row")
        self.positions = [int(p) for p in positions]
        self.seed = seed
        self.epoch = 0
        self.yielded = 0

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.positions), generator=g).tolist()
        while self.yielded < len(order):
            pos = self.positions[order[self.yielded]]
            self.yielded += 1
            yield pos
        self.epoch += 1
        self.yielded = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "yielded": self.yielded, "seed": self.seed, "n": len(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != len(self.positions) or state.get("seed") != self.seed:
            raise ValueError(f"sampler state is for {state.get('n')} rows / seed {state.get('seed')}, "
                             f"this sampler has {len(self.positions)} rows / seed {self.seed}: wrong stage subset")
        self.epoch, self.yielded = int(state["epoch"]), int(state["yielded"])
