"""Batching for training: collate with padding, an infinite seeded (resumable, sharded, aspect-grouped)
sampler, and ``build_dataset`` from the config. Evaluation reads images itself (evaluation/inference.py)."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import Config
from ..preprocess import pad_batch
from .coco import CocoDetection, DatasetError
from .synthetic import ensure_demo_dataset
from .transforms import build_transforms


def collate(samples: Sequence[Optional[dict]], size_divisible: int) -> dict:
    """Samples (None = bad image, dropped and counted) -> ``images`` (N, 3, H, W) zero-padded to multiples
    of ``size_divisible``, ``image_sizes`` [(h, w)], ``targets`` [{"boxes", "labels", "crowd_boxes"}],
    ``image_ids`` and ``skipped``. N is 0 when every sample was bad."""
    good = [s for s in samples if s is not None and "image" in s]
    images = pad_batch([s["image"] for s in good], size_divisible) if good else torch.zeros(0, 3, 0, 0)
    return {
        "images": images,
        "image_sizes": [tuple(s["size"]) for s in good],
        "targets": [{k: s[k] for k in ("boxes", "labels", "crowd_boxes")} for s in good],
        "image_ids": [s["image_id"] for s in good],
        "skipped": len(samples) - len(good),
        # Which images, where known (build_train_loader's NamedSkips): a bad file is drawn every epoch,
        # so a count of occurrences would overstate how many files are bad.
        "skipped_ids": [s["skipped_id"] for s in samples if s is not None and "skipped_id" in s],
    }


class NamedSkips(torch.utils.data.Dataset):
    """``dataset[i]``, with a bad image (None) replaced by ``{"skipped_id": its image id}``."""

    def __init__(self, dataset: CocoDetection):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        if sample is None:
            i = index[0] if isinstance(index, (tuple, list)) else index
            return {"skipped_id": self.dataset.ids[i]}
        return sample


class TrainBatchSampler(Sampler):
    """Infinite stream of batches of ``(dataset index, sample seed)``.

    The global stream is epoch after epoch of permutations of the dataset, each position with its own
    sample seed, both drawn from ``seed`` and the epoch alone. Rank ``r`` of ``world_size`` takes the
    positions p with p % world_size == r and batches them ``ims_per_batch // world_size`` at a time; with
    ``aspect_ratio_grouping`` landscape and portrait images (from ``image_info``, nothing is loaded) fill
    separate batches, as Detectron2's AspectRatioGroupedDataset does. ``start_iter=k`` skips the first k
    batches, so a resumed run sees exactly the batches an uninterrupted one would have.
    """

    def __init__(self, dataset: CocoDetection, ims_per_batch: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, aspect_ratio_grouping: bool = True, start_iter: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if ims_per_batch % world_size or ims_per_batch < world_size:
            raise ValueError(f"solver.ims_per_batch={ims_per_batch} must be a positive multiple of "
                             f"the number of processes ({world_size})")
        self.size = len(dataset)
        if self.size == 0:
            raise DatasetError("cannot sample training batches from an empty dataset")
        self.batch_size = ims_per_batch // world_size
        self.seed, self.rank, self.world_size, self.start_iter = seed, rank, world_size, start_iter
        self.group = np.zeros(self.size, np.int64)
        if aspect_ratio_grouping:
            infos = (dataset.image_info(i) for i in range(self.size))
            self.group = np.array([int(info["height"] > info["width"]) for info in infos], np.int64)

    def _indices(self) -> Iterator[tuple[int, int]]:
        """This rank's share of the global stream of (index, sample seed)."""
        epoch, pos = 0, 0  # pos: global position of the epoch's first item
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            perm, seeds = rng.permutation(self.size), rng.integers(0, 2 ** 31, self.size)
            first = (self.rank - pos) % self.world_size
            yield from zip(perm[first::self.world_size].tolist(), seeds[first::self.world_size].tolist())
            epoch, pos = epoch + 1, pos + self.size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: list[list[tuple[int, int]]] = [[], []]
        done = 0
        for item in self._indices():
            bucket = buckets[self.group[item[0]]]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                if done >= self.start_iter:
                    yield bucket[:]
                done += 1
                bucket.clear()


@contextlib.contextmanager
def opencv_serial() -> Iterator[None]:
    """OpenCV at one thread for the block (workers fork here), then back to the caller's count.

    OpenCV's pthreads pool does not survive ``fork``: a worker that reconfigures a pool its parent had
    started (``cv2.setNumThreads`` in ``worker_init_fn``) deadlocks in ``pthread_cond_destroy``. So the
    parent, whose pool threads are alive, stops its pool before forking: the workers inherit a serial
    OpenCV, which is what they should run (the workers are the parallelism) and never touch it."""
    import cv2
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class DataLoaderTimeout(TimeoutError):
    """The data loader delivered no batch within ``dataloader.timeout`` seconds."""


class WorkerLoader(DataLoader):
    """A DataLoader whose workers start safely (``opencv_serial``) and whose wait for a batch is bounded:
    after ``timeout`` seconds without one, ``DataLoaderTimeout`` names the setting instead of a silent wait."""

    def __iter__(self):
        with opencv_serial():
            batches = super().__iter__()  # persistent workers fork here, once
        return self._watched(batches) if self.num_workers else batches

    def _watched(self, batches) -> Iterator[dict]:
        while True:
            try:
                yield next(batches)
            except StopIteration:
                return
            except RuntimeError as e:
                if "timed out" not in str(e):
                    raise
                raise DataLoaderTimeout(
                    f"the data loader delivered no batch for {self.timeout:g} s (dataloader.timeout="
                    f"{self.timeout:g}, dataloader.num_workers={self.num_workers}): a worker is stuck or reading "
                    f"images is that slow; raise dataloader.timeout, or set dataloader.num_workers=0") from None


def build_train_loader(cfg: Config, dataset: CocoDetection, rank: int = 0, world_size: int = 1,
                       start_iter: int = 0) -> DataLoader:
    """Infinite DataLoader of collated batches (see ``collate``), this rank's share, resuming at ``start_iter``."""
    sampler = TrainBatchSampler(dataset, cfg.solver.ims_per_batch, cfg.train.seed, rank, world_size,
                                cfg.dataloader.aspect_ratio_grouping, start_iter)
    workers = cfg.dataloader.num_workers
    # pin_memory only with CUDA (the decision is tested; the pinning itself needs a GPU, untested here).
    return WorkerLoader(NamedSkips(dataset), batch_sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, timeout=cfg.dataloader.timeout if workers else 0,
                        collate_fn=functools.partial(collate, size_divisible=cfg.input.size_divisible),
                        pin_memory=torch.cuda.is_available())


def build_dataset(cfg: Config, split: str, augment: bool = True) -> CocoDetection:
    """The ``cfg.data.<split>`` dataset: with ``augment`` the training transform and ``data.filter_empty``,
    else the images as stored ([0, 1] RGB floats, for looking at them). With ``data.demo`` the synthetic dataset is generated first when the annotation file is missing."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    ds = getattr(cfg.data, split)
    if not ds.annotations or not ds.images:
        raise DatasetError(f"data.{split}.images and data.{split}.annotations must be set "
                           f"(got images={ds.images!r}, annotations={ds.annotations!r})")
    if cfg.data.demo and not Path(ds.annotations).is_file():
        ensure_demo_dataset(cfg.data)
    return CocoDetection(ds.images, ds.annotations, build_transforms(cfg.input) if augment else None,
                         filter_empty=cfg.data.filter_empty and augment, skip_bad_images=cfg.data.skip_bad_images)
