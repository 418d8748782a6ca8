from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from retinanet.preprocess import pad_batch, preprocess, read_image, resize, resize_scale, to_float_tensor

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def test_every_input_type_gives_the_same_tensor(tmp_path, rgb):
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    Image.fromarray(rgb).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(rgb), rgb,
              torch.from_numpy(rgb).permute(2, 0, 1), expected.clone()]
    for x in inputs:
        t = to_float_tensor(x)
        assert t.dtype == torch.float32 and t.shape == (3, 30, 40)
        torch.testing.assert_close(t, expected, atol=0, rtol=0)


def test_grayscale_rgba_palette_and_16_bit(rgb):
    gray = rgb[..., 0]
    assert torch.equal(to_float_tensor(gray), to_float_tensor(np.repeat(gray[..., None], 3, 2)))
    assert torch.equal(to_float_tensor(Image.fromarray(gray)), to_float_tensor(gray))
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 255, np.uint8)], axis=2)
    assert torch.equal(to_float_tensor(Image.fromarray(rgba)), to_float_tensor(rgb))
    assert torch.equal(to_float_tensor(rgba), to_float_tensor(rgb))
    assert to_float_tensor(Image.fromarray(rgb).convert("P")).shape == (3, 30, 40)
    wide = Image.fromarray((gray.astype(np.uint16) * 256).astype(np.uint16))
    assert torch.equal(to_float_tensor(wide), to_float_tensor(gray))
    assert to_float_tensor(torch.zeros(1, 5, 6, dtype=torch.uint8)).shape == (3, 5, 6)


def test_bad_inputs(tmp_path, rgb):
    with pytest.raises(ValueError, match="uint8"):
        to_float_tensor(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_float_tensor(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        to_float_tensor(torch.zeros(1, 3, 5, 5))
    with pytest.raises(TypeError, match="list"):
        to_float_tensor([1, 2])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(OSError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(OSError, match="junk.jpg"):
        read_image(tmp_path / "junk.jpg")


def test_exif_orientation_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    assert read_image(tmp_path / "r.jpg").shape == (40, 30, 3)


@pytest.mark.parametrize("h, w, min_size, max_size", [(480, 640, 800, 1333), (333, 500, 320, 320),
                                                     (100, 900, 800, 1333), (41, 77, 128, 160)])
def test_resize_size(h, w, min_size, max_size):
    scale = resize_scale(h, w, min_size, max_size)
    out = resize(torch.rand(3, h, w), min_size, max_size)
    assert out.shape[-2:] == (int(h * scale), int(w * scale))
    assert max(out.shape[-2:]) <= max_size and min(out.shape[-2:]) <= min_size


def test_preprocess_equals_torchvision_transform():
    images = [torch.rand(3, 480, 640), torch.rand(3, 333, 500), torch.rand(3, 97, 301)]
    tv = GeneralizedRCNNTransform(320, 400, list(MEAN), list(STD), size_divisible=32).eval()
    expected = tv(images)[0]
    batch, sizes = preprocess(images, 320, 400, MEAN, STD, 32)
    assert sizes == expected.image_sizes
    assert batch.shape == expected.tensors.shape
    torch.testing.assert_close(batch, expected.tensors, atol=0, rtol=0)


def test_pad_batch():
    a, b = torch.ones(3, 10, 20), torch.full((3, 33, 5), 2.0)
    batch = pad_batch([a, b], 32)
    assert batch.shape == (2, 3, 64, 32)
    assert torch.equal(batch[0, :, :10, :20], a) and batch[0, :, 10:].abs().sum() == 0 and batch[0, :, :, 20:].abs().sum() == 0
    assert torch.equal(batch[1, :, :33, :5], b)
