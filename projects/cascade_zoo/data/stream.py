"""A training data stream that is a pure function of (seed, iteration), so that a resumed run sees
exactly the images and augmentations an uninterrupted run would have seen, and N processes see
together what one process sees with the same total batch.

Detectron2's ``TrainingSampler`` restarts its shuffled stream from the beginning when a run is
resumed, its ``AspectRatioGroupedDataset`` loses the half-filled groups, and augmentation draws
come from each loader worker's RNG, seeded when the workers start. Here instead:

- **positions**: the stream is positions 0, 1, 2, ...; position p is record
  ``perm_e[p % N]`` of the dataset, where ``perm_e`` is the shuffle of epoch ``e = p // N``,
  drawn from ``(seed, e)``;
- **batches**: the global batch of iteration i (``SOLVER.IMS_PER_BATCH`` positions) is formed
  from the position stream alone: with aspect-ratio grouping, positions are put in one of two
  groups (landscape / portrait, from the records' width and height, as Detectron2 groups them)
  and a group that holds a full global batch is emitted. Process r of W takes positions
  ``r, r + W, ...`` of each global batch, so that the W processes together have the same images
  as one process;
- **augmentation**: before the mapper runs on position p, numpy's and Python's global RNGs are
  seeded from ``(seed, p)``, so Detectron2's augmentations (which draw from them) are a function
  of the position, whichever worker maps it;
- **resume**: the batch sampler starts at ``start_iter`` (the stream up to it is replayed from
  the records' sizes, without loading images).

``seed`` is ``SEED`` when it is >= 0, otherwise a random seed shared by all processes; the
trainer saves it in checkpoints and restores it at resume.
"""

import random
from typing import Iterator, List, Sequence

import numpy as np
import torch.utils.data as torchdata
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed

__all__ = [
    "StreamOrder",
    "ResumableBatchSampler",
    "StreamDataset",
    "build_stream_loader",
    "check_total_batch_size",
]


def _derived_seed(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) % (1 << 63) for w in words]).generate_state(1)[0])


class StreamOrder:
    """Position -> record index: a fresh shuffle of the N records per epoch, from ``seed``."""

    def __init__(self, num_records: int, seed: int, shuffle: bool = True):
        if num_records <= 0:
            raise ValueError("The training dataset is empty: no images to train on")
        self.num_records = num_records
        self.seed = int(seed)
        self.shuffle = shuffle
        self._epoch, self._perm = None, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_records)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.num_records)
        return int(self._perm[offset])

    def sample_seed(self, position: int) -> int:
        """The RNG seed of the augmentations of ``position``."""
        return _derived_seed(self.seed, position, 0x5EED)


def check_total_batch_size(total_batch_size: int, world_size: int) -> None:
    """Raise ValueError naming ``SOLVER.IMS_PER_BATCH`` unless it is a positive multiple of the
    number of processes (with 0 the stream would wait forever for a batch to fill)."""
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH is {total_batch_size}: it is the number of images per "
            f"iteration over all processes, and must be a positive multiple of the number of "
            f"processes ({world_size})"
        )


class ResumableBatchSampler(torchdata.Sampler):
    """This process's positions of each global batch, from iteration ``start_iter`` on
    (an infinite stream; see module doc)."""

    def __init__(
        self,
        order: StreamOrder,
        landscape: Sequence[bool],
        total_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        aspect_ratio_grouping: bool = True,
        start_iter: int = 0,
    ):
        check_total_batch_size(total_batch_size, world_size)
        self.order = order
        self.landscape = list(landscape)
        self.total_batch_size = total_batch_size
        self.rank, self.world_size = rank, world_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.start_iter = start_iter

    def global_batches(self) -> Iterator[List[int]]:
        """Global batches of positions, from iteration 0."""
        position = 0
        groups = ([], [])
        while True:
            if not self.aspect_ratio_grouping:
                yield list(range(position, position + self.total_batch_size))
                position += self.total_batch_size
                continue
            group = groups[0 if self.landscape[self.order.index(position)] else 1]
            group.append(position)
            position += 1
            if len(group) == self.total_batch_size:
                yield group[:]
                group.clear()

    def __iter__(self):
        for i, batch in enumerate(self.global_batches()):
            if i >= self.start_iter:
                yield batch[self.rank :: self.world_size]


class StreamDataset(torchdata.Dataset):
    """Maps a stream position to its mapped record, with the position's augmentation seed."""

    def __init__(self, dataset: Sequence[dict], mapper, order: StreamOrder):
        self.dataset = dataset
        self.mapper = mapper
        self.order = order

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, position: int):
        seed = self.order.sample_seed(position)
        np.random.seed(seed % (1 << 32))
        random.seed(seed)
        return self.mapper(self.dataset[self.order.index(position)])


def build_stream_loader(
    dataset: Sequence[dict],
    mapper,
    *,
    records: Sequence[dict] = None,
    total_batch_size: int,
    seed: int,
    num_workers: int,
    rank: int,
    world_size: int,
    aspect_ratio_grouping: bool = True,
):
    """A DataLoader over the stream; its ``batch_sampler`` (start_iter) and ``dataset.order``
    (seed) may be changed before an iterator is made (at resume). ``records``: the plain dicts
    behind ``dataset`` (e.g. before DatasetFromList serialized them), read for the records'
    sizes without deserializing each."""
    order = StreamOrder(len(dataset), seed)
    landscape = [d.get("width", 1) > d.get("height", 0) for d in (records or dataset)]
    sampler = ResumableBatchSampler(
        order,
        landscape,
        total_batch_size,
        rank=rank,
        world_size=world_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
    )
    return torchdata.DataLoader(
        StreamDataset(dataset, mapper, order),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
    )
