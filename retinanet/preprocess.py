"""Image reading and test-time preprocessing shared by the Detector, eval and export."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any PIL image: EXIF orientation applied; grayscale, RGBA, palette,
    CMYK and 16-bit modes converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.int64)
        # 16-bit data spans 0..65535; int32 "I" images are treated the same way.
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img)
        arr = np.clip(arr, 0, 255).astype(np.uint8) if arr.max() > 1 else (np.clip(arr, 0, 1) * 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Reads an image file as (H, W, 3) uint8 RGB. Raises OSError naming the path if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise OSError(f"image file is empty: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode fully now: a truncated file fails here, not later
            return pil_to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {e}") from None


def to_float_tensor(image: ImageInput) -> Tensor:
    """Any supported input -> (3, H, W) float32 RGB in [0, 1].

    Accepts a file path, a PIL image, an (H, W, 3) or (H, W) uint8 numpy array, or a (3, H, W)
    tensor (uint8 0-255, or float already in [0, 1]).
    """
    if isinstance(image, (str, Path)):
        image = read_image(image)
    elif isinstance(image, Image.Image):
        image = pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) image array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got {image.dtype}")
        return torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float() / 255
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
        image = image.expand(3, -1, -1)
        return image.float() / 255 if image.dtype == torch.uint8 else image.float()
    raise TypeError(f"unsupported image type {type(image).__name__}; expected a path, PIL image, array or tensor")


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale that brings the short side to ``min_size`` without the long side passing ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resize(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Bilinear resize of (C, H, W); output size floor(H * s), floor(W * s), as torchvision does."""
    scale = resize_scale(image.shape[-2], image.shape[-1], min_size, max_size)
    return F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                         align_corners=False)[0]


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - m) / s


def pad_batch(images: Sequence[Tensor], size_divisible: int) -> Tensor:
    """Zero-pads (3, H_i, W_i) images (already normalised) into (N, 3, H, W), H and W multiples of
    ``size_divisible``; the image sits at the top left."""
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    h = -(-h // size_divisible) * size_divisible
    w = -(-w // size_divisible) * size_divisible
    batch = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch


def preprocess(images: Sequence[Tensor], min_size: int, max_size: int, mean: Sequence[float],
               std: Sequence[float], size_divisible: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """[(3, H, W) in [0, 1]] -> padded normalised batch and the resized (H', W') of each image.

    Normalises before resizing, as torchvision does, so that imported torchvision models see
    bit-identical inputs.
    """
    resized = [resize(normalize(im, mean, std), min_size, max_size) for im in images]
    return pad_batch(resized, size_divisible), [(int(r.shape[-2]), int(r.shape[-1])) for r in resized]


class Preprocessor:
    """The test-time input pipeline with its settings: short side to ``min_size`` (long side at most
    ``max_size``), normalise with ``mean``/``std``, zero-pad to multiples of ``size_divisible``."""

    def __init__(self, min_size: int, max_size: int, mean: Sequence[float], std: Sequence[float],
                 size_divisible: int):
        self.min_size, self.max_size = min_size, max_size
        self.mean, self.std, self.size_divisible = tuple(mean), tuple(std), size_divisible

    def __call__(self, images: Sequence[Tensor], min_size: Optional[int] = None,
                 max_size: Optional[int] = None) -> tuple[Tensor, list[tuple[int, int]]]:
        """[(3, H, W) in [0, 1]] -> batch (N, 3, H', W') and each image's resized (h, w); ``min_size``
        and ``max_size`` replace the defaults for one call (test-time augmentation scales)."""
        return preprocess(images, min_size or self.min_size, max_size or self.max_size, self.mean, self.std,
                          self.size_divisible)
