from __future__ import annotations

import numpy as np
import pytest

from retinanet.visualize import class_color, draw_detections


def test_draws_boxes_in_class_colours():
    image = np.full((120, 160, 3), 128, np.uint8)
    boxes = np.array([[10, 40, 60, 100], [80, 50, 150, 110]], dtype=np.float32)
    out = draw_detections(image, boxes, ["cat", "dog"], np.array([0.9, 0.5]), np.array([1, 2]), line_width=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 128).all()  # the input is left alone
    assert tuple(out[80, 10]) == class_color(1) and tuple(out[90, 150]) == class_color(2)  # left / right edges
    assert tuple(out[70, 35]) == (128, 128, 128)  # inside stays untouched
    assert (out[:40, 10:60] != 128).any()  # the caption sits above the first box


def test_colours_are_stable_and_distinct():
    colours = [class_color(i) for i in range(20)]
    assert colours == [class_color(i) for i in range(20)] and len(set(colours)) == 20


def test_no_detections_and_errors():
    image = np.zeros((30, 40, 3), np.uint8)
    assert (draw_detections(image, np.zeros((0, 4)), [], np.zeros(0), np.zeros(0)) == image).all()
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(image.astype(np.float32), np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="names"):
        draw_detections(image, np.zeros((2, 4)), ["a"])
