"""A stateful sampler over the selected subset: yields dataset row positions, reshuffled every epoch.

Epoch e yields ``positions[perm_e]`` where ``perm_e = randperm(len(positions), generator=seed + e)``. Its state is
(epoch, number yielded in the epoch); ``torchdata``'s ``StatefulDataLoader`` saves it with the loader
(``data.pt`` in verl) and a restored sampler continues from the same position.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader


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


def stage_dataloader(dataset: Dataset, stage: int, selected_ids: Sequence[int], sampler_seed: int,
                     id_to_pos: Mapping[int, int], batch_size: int, collate_fn: Callable, num_workers: int = 0,
                     batch_key: str = "batch_size") -> StatefulDataLoader:
    """A stage's ``StatefulDataLoader``: the whole ``dataset``, batches (``drop_last``) of the selected rows drawn by
    a ``RankedSubsetSampler``; a clear error when the subset cannot fill one batch (``batch_key`` names the knob)."""
    positions = [id_to_pos[i] for i in selected_ids]
    if len(positions) < batch_size:
        raise ValueError(f"stage {stage}: {len(positions)} selected prompts, fewer than the batch size {batch_size}; "
                         f"raise the select fraction or lower {batch_key}")
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=RankedSubsetSampler(positions, sampler_seed),
                              drop_last=True, collate_fn=collate_fn, num_workers=num_workers)
