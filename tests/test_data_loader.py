from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from retinanet.config_loader import load_config
from retinanet.data import TrainBatchSampler, build_dataset, build_train_loader, collate, make_synthetic_coco
from retinanet.data import synthetic


class FakeDataset:
    """Only what the sampler reads: len and image_info. Every third image is portrait."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def image_info(self, i: int) -> dict:
        return {"file_name": f"{i}.jpg", "height": 60 if i % 3 == 0 else 40, "width": 40 if i % 3 == 0 else 60}


def take(sampler: TrainBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def _sample(h: int, w: int, image_id: int) -> dict:
    return {"image": torch.rand(3, h, w), "boxes": torch.tensor([[1.0, 2, 3, 4]]), "labels": torch.tensor([2]),
            "crowd_boxes": torch.zeros(0, 4), "image_id": image_id, "file_name": f"{image_id}.jpg",
            "orig_size": (h * 2, w * 2), "size": (h, w)}


def test_collate_pads_to_multiples_and_counts_skipped():
    samples = [_sample(100, 130, 1), None, _sample(257, 60, 2), None]
    batch = collate(samples, size_divisible=128)
    assert batch["images"].shape == (2, 3, 384, 256) and batch["skipped"] == 2
    assert batch["image_sizes"] == [(100, 130), (257, 60)] and batch["image_ids"] == [1, 2]
    assert set(batch) == {"images", "image_sizes", "targets", "image_ids", "skipped", "skipped_ids"}
    assert torch.equal(batch["images"][0, :, :100, :130], samples[0]["image"])
    assert batch["images"][0, :, 100:].abs().sum() == 0 and batch["images"][0, :, :, 130:].abs().sum() == 0
    assert torch.equal(batch["targets"][1]["boxes"], samples[2]["boxes"]) and set(batch["targets"][0]) == \
        {"boxes", "labels", "crowd_boxes"}
    empty = collate([None, None], size_divisible=128)
    assert empty["images"].shape[0] == 0 and empty["skipped"] == 2 and empty["targets"] == []


def test_sampler_is_deterministic_and_seed_dependent():
    ds = FakeDataset(23)
    a, b = take(TrainBatchSampler(ds, 4, seed=1), 30), take(TrainBatchSampler(ds, 4, seed=1), 30)
    assert a == b and all(len(batch) == 4 for batch in a)
    assert take(TrainBatchSampler(ds, 4, seed=2), 30) != a
    assert all(isinstance(i, int) and isinstance(s, int) for batch in a for i, s in batch)


def test_each_epoch_is_a_permutation_with_fresh_sample_seeds():
    ds = FakeDataset(12)
    items = [x for batch in take(TrainBatchSampler(ds, 3, seed=0, aspect_ratio_grouping=False), 8) for x in batch]
    assert sorted(i for i, _ in items[:12]) == list(range(12)) == sorted(i for i, _ in items[12:])
    assert [i for i, _ in items[:12]] != [i for i, _ in items[12:]]
    assert len({s for _, s in items}) == 24  # a seed per position: the same image is augmented differently


@pytest.mark.parametrize("world_size, grouping", [(1, True), (1, False), (2, True), (4, False)])
def test_start_iter_resumes_the_uninterrupted_stream(world_size, grouping):
    ds = FakeDataset(17)
    for rank in range(world_size):
        full = take(TrainBatchSampler(ds, 8, 5, rank, world_size, grouping), 40)
        for k in (1, 7, 23):
            resumed = take(TrainBatchSampler(ds, 8, 5, rank, world_size, grouping, start_iter=k), 40 - k)
            assert resumed == full[k:]


def test_ranks_get_disjoint_shares_of_the_global_stream():
    ds = FakeDataset(20)
    single = [x for b in take(TrainBatchSampler(ds, 4, 3, aspect_ratio_grouping=False), 10) for x in b]
    shares = [[x for b in take(TrainBatchSampler(ds, 4, 3, r, 2, aspect_ratio_grouping=False), 10) for x in b]
              for r in range(2)]
    assert all(len(b) == 2 for b in take(TrainBatchSampler(ds, 4, 3, 1, 2), 5))  # per-rank batch 4 // 2
    assert not set(shares[0]) & set(shares[1])
    # Interleaving the two ranks gives back the single-process stream: the same images, seeds, order.
    assert [x for pair in zip(*shares) for x in pair] == single[:40]
    grouped = [{x for b in take(TrainBatchSampler(ds, 4, 3, r, 2), 10) for x in b} for r in range(2)]
    assert not grouped[0] & grouped[1]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        TrainBatchSampler(ds, 3, 0, 0, 2)


def test_aspect_ratio_grouping_keeps_orientation_within_batches():
    ds = FakeDataset(30)
    batches = take(TrainBatchSampler(ds, 4, 0, aspect_ratio_grouping=True), 40)
    portrait = [{i % 3 == 0 for i, _ in b} for b in batches]
    assert all(len(p) == 1 for p in portrait) and {True} in portrait and {False} in portrait
    mixed = take(TrainBatchSampler(ds, 4, 0, aspect_ratio_grouping=False), 40)
    assert any(len({i % 3 == 0 for i, _ in b}) == 2 for b in mixed)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_coco(root, num_train=10, num_val=5, image_size=(64, 80), seed=0)
    return root


def _cfg(root: Path, *extra: str):
    return load_config(None, [
        f"data.train.images={root}/images", f"data.train.annotations={root}/annotations/train.json",
        f"data.val.images={root}/images", f"data.val.annotations={root}/annotations/val.json",
        "input.min_size_train=[64,80]", "input.max_size_train=120", "input.min_size_test=64", "input.max_size_test=120",
        "solver.ims_per_batch=4", "dataloader.num_workers=0", *extra])


def test_train_loader_resumes_exactly(synth):
    cfg = _cfg(synth, "input.color_jitter=0.5")
    ds = build_dataset(cfg, "train")
    full = list(itertools.islice(iter(build_train_loader(cfg, ds)), 4))
    resumed = next(iter(build_train_loader(cfg, ds, start_iter=3)))
    batch = full[3]
    assert batch["images"].shape[0] == 4 and batch["images"].shape[2] % 128 == 0 and batch["images"].shape[3] % 128 == 0
    assert resumed["image_ids"] == batch["image_ids"] and torch.equal(resumed["images"], batch["images"])
    for a, b in zip(resumed["targets"], batch["targets"]):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "labels", "crowd_boxes"))


def test_train_loader_with_workers(synth):
    cfg = _cfg(synth, "dataloader.num_workers=2")
    ds = build_dataset(cfg, "train")
    with_workers = list(itertools.islice(iter(build_train_loader(cfg, ds)), 3))
    cfg0 = _cfg(synth)
    in_process = list(itertools.islice(iter(build_train_loader(cfg0, ds)), 3))
    for a, b in zip(with_workers, in_process):
        assert a["image_ids"] == b["image_ids"] and torch.equal(a["images"], b["images"])


def test_build_dataset_generates_the_demo_data(tmp_path, monkeypatch):
    calls = []

    def small(root, **kw):
        calls.append(root)
        return make_synthetic_coco(root, num_train=6, num_val=3, image_size=(48, 64))

    monkeypatch.setattr(synthetic, "make_synthetic_coco", small)
    root = tmp_path / "datasets" / "demo"
    cfg = _cfg(root, "data.demo=true", "data.filter_empty=true")
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val", augment=False)
    assert calls == [root] and val.stats["images"] == 3 and train.stats["images"] == 6
    assert [c["id"] for c in train.categories] == [1, 3, 5, 7, 9]
    assert train.stats["filtered_empty"] == train.stats["empty_images"] == 6 - len(train)  # training only
    assert val.stats["filtered_empty"] == 0 and len(val) == val.stats["images"]
    with pytest.raises(ValueError, match="data.train.images and data.train.annotations must be set"):
        build_dataset(load_config(), "train")
    with pytest.raises(ValueError, match="split must be"):
        build_dataset(cfg, "test", augment=False)
