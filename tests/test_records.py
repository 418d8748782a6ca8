"""Compact per-image records and the column-wise annotation parser agree with the plain Python data."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from retinanet.fast.records import ImageRecords, gc_paused, group_by_image, load_json, parse_annotations


def test_records_round_trip():
    images = {30: {"file_name": "a.jpg", "height": 4, "width": 5},
              10: {"file_name": "dir/é.png", "height": 6, "width": 7},
              20: {"file_name": "c.jpg", "height": 8, "width": 9}}
    boxes = np.arange(16, dtype=np.float32).reshape(4, 4)
    crowd = np.array([False, False, False, True])
    rec = ImageRecords(images, np.array([1, 0, 1, 0]), boxes, np.array([7, 8, 9, 6]), crowd)
    assert rec.position(10) == 1 and rec.info(1) == {"file_name": "dir/é.png", "height": 6, "width": 7}
    b, lab, crowd = rec.targets(1)
    assert b.tolist() == [[0, 1, 2, 3], [8, 9, 10, 11]] and lab.tolist() == [7, 9] and crowd.shape == (0, 4)
    b[:] = -1  # a copy: the store is unchanged
    assert rec.targets(1)[0][0, 0] == 0 and rec.targets(0)[0].shape == (1, 4) and rec.targets(2)[1].size == 0
    assert rec.targets(0)[2].tolist() == [boxes[3].tolist()]  # the crowd box: an ignore region, not a box
    assert rec.num_boxes().tolist() == [1, 2, 0]
    with pytest.raises(KeyError):
        rec.position(11)
    # group_by_image: stable within an image, offsets per image
    rows, offsets = group_by_image(np.array([1, 0, 1]), np.array([7, 8, 9]), 3)
    assert rows.tolist() == [8, 7, 9] and offsets.tolist() == [0, 1, 3, 3]
    # no images and no annotations: parsed, not refused
    assert all(len(a) == 0 for a in parse_annotations([], [], {1: 0}))


def test_parse_annotations_fast_and_refusing():
    anns = [{"image_id": 5, "category_id": 3, "bbox": [1, 2, 3.5, 4]}, {"image_id": 2, "category_id": 1,
                                                                        "bbox": [0, 0, 1, 1], "iscrowd": 1}]
    img, lab, crowd, xywh = parse_annotations(anns, [2, 5], {1: 0, 3: 1})
    assert img.tolist() == [1, 0] and lab.tolist() == [1, 0] and crowd.tolist() == [False, True]
    assert xywh.tolist() == [[1, 2, 3.5, 4], [0, 0, 1, 1]]
    for flag in (True, 1.0):  # validate_coco accepts these too
        assert parse_annotations([{**anns[0], "iscrowd": flag}], [2, 5], {1: 0, 3: 1})[2].tolist() == [True]
    for bad in ({"image_id": 9}, {"category_id": 2}, {"bbox": [1, 2, 3]}, {"bbox": [True, 0, 1, 1]},
                {"iscrowd": 2}, {"iscrowd": [1]}, {"image_id": "5"}):
        assert parse_annotations([{**anns[0], **bad}], [2, 5], {1: 0, 3: 1}) is None, bad


def test_json(tmp_path):
    (tmp_path / "nan.json").write_text('{"a": NaN}')  # orjson refuses NaN: json reads it
    assert np.isnan(load_json(tmp_path / "nan.json")["a"])
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
