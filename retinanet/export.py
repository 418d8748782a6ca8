"""ONNX and TorchScript export (``runtime.py`` loads the exported files back as a ``Detector``).

What is in the graph: the network only. It takes the normalised, zero-padded batch (N, 3, H, W)
(H, W multiples of ``input.size_divisible``; any size, any batch) and returns, per level P3-P7,
class logits (N, A*K, H_l, W_l) and box deltas (N, A*4, H_l, W_l): outputs ``cls_p3, box_p3, ...,
cls_p7, box_p7``. Resizing, anchors (computed from the output shapes), decoding, top-k, NMS and
the label mapping run in Python with the same code as the PyTorch model (``runtime.LevelOutputsModel``
adapts the runtime so that ``Detector`` and TTA run it unchanged). This keeps the graph free of
data-dependent shapes (NMS, top-k), so any runtime can execute it, and detections match PyTorch's.
The config and categories travel inside the file (ONNX metadata / TorchScript extra files).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn

from .config import Config
from .config_loader import to_dict
from .detector import Detector
from .fast.fusion import fuse_for_inference
from .model import RetinaNet
from .runtime import quiet_jit

FORMATS = ("onnx", "torchscript")


class ExportableRetinaNet(nn.Module):
    """RetinaNet without the reshapes and anchors: a pure conv graph with one output per level and branch."""

    def __init__(self, model: RetinaNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """images (N, 3, H, W) -> (cls_p3 (N, A*K, H/8, W/8), box_p3 (N, A*4, H/8, W/8), ..., box_p7)."""
        cls_maps, box_maps = self.model.level_maps(images)
        return tuple(t for pair in zip(cls_maps, box_maps) for t in pair)


def output_names(num_levels: int = 5) -> list[str]:
    return [f"{kind}_p{lvl}" for lvl in range(3, 3 + num_levels) for kind in ("cls", "box")]


def _metadata(cfg: Config, categories: list[dict]) -> dict[str, str]:
    # The categories are in the config too; stored apart for readers of the file that are not us.
    return {"retinanet_config": json.dumps(to_dict(cfg)), "retinanet_categories": json.dumps(categories),
            "retinanet_outputs": "per-level logits (N, A*K, H_l, W_l) and deltas (N, A*4, H_l, W_l); "
                                 "post-processing not included"}


def export_model(detector: Detector, path: Union[str, Path], fmt: str = "onnx", opset: int = 17,
                 winograd: bool = False) -> Path:
    """Writes the detector's network as ONNX or TorchScript with dynamic batch
    and image size; its config and categories go into the file. With ``winograd`` (ONNX only), the
    wide 3x3 convs are written as Winograd F(4x4, 3x3) (``winograd.py``): fewer multiplications, but
    a file about 5x larger (the transformed filters), and onnxruntime's fused direct convs are as fast
    or faster on some CPUs (docs/performance.md); GPU runtimes choose their own conv algorithms."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if not isinstance(detector.model, RetinaNet):
        raise ValueError("only a PyTorch RetinaNet can be exported, not an already exported model")
    cfg, categories = detector.cfg, detector.categories
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A copy (tracing needs the CPU and eval mode; the caller's model keeps its device and mode), with
    # BatchNorm folded into the convs: a smaller graph, the same outputs to float rounding.
    # Winograd in TorchScript would fix the traced image size (its tiling is shape arithmetic).
    net = ExportableRetinaNet(fuse_for_inference(detector.model, channels_last=False,
                                                 winograd=winograd and fmt == "onnx")).cpu().eval()
    step = detector.preprocessor.size_divisible  # any multiple works; a small one keeps tracing fast
    sample = torch.randn(1, 3, 2 * step, 3 * step)  # H != W: no axis gets folded into the other
    names = output_names(len(cfg.model.anchors.strides))
    with torch.no_grad():
        if fmt == "onnx":
            import onnx  # noqa: F401 - fail early with a clear message below if missing
            dyn = {"images": {0: "batch", 2: "height", 3: "width"},
                   **{n: {0: "batch", 2: f"h_{n[-2:]}", 3: f"w_{n[-2:]}"} for n in names}}
            # The TorchScript-based exporter: the dynamo one needs onnxscript and gains nothing for a conv net.
            with warnings.catch_warnings():  # it warns that it is the legacy exporter: chosen on purpose
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (sample,), str(path), input_names=["images"], output_names=names,
                                  dynamic_axes=dyn, opset_version=opset, dynamo=False)
            proto = onnx.load(str(path))
            for k, v in _metadata(cfg, categories).items():
                proto.metadata_props.add(key=k, value=v)
            onnx.save(proto, str(path))
        else:
            with quiet_jit():
                traced = torch.jit.trace(net, (sample,), check_trace=False)
                torch.jit.save(traced, str(path), _extra_files=_metadata(cfg, categories))
    return path


def compare_detections(expected: dict, got: dict, box_tol: float = 1e-2, score_tol: float = 1e-4) -> tuple[bool, float, float]:
    """Whether two detection sets of one image agree as sets: same count, and each expected detection
    has its own counterpart with the same label, boxes within ``box_tol`` px and score within
    ``score_tol``. Tied scores may come out in either order, so rows are matched, not compared by
    index. Returns (ok, max box difference, max score difference) over the matched pairs."""
    n = len(expected["boxes"])
    if n != len(got["boxes"]):
        return False, float("inf"), float("inf")
    if n == 0:
        return True, 0.0, 0.0
    box = (expected["boxes"][:, None, :] - got["boxes"][None, :, :]).abs().amax(-1)  # (n, n)
    score = (expected["scores"][:, None] - got["scores"][None, :]).abs()
    fits = (box <= box_tol) & (score <= score_tol) & (expected["labels"][:, None] == got["labels"][None, :])
    taken = torch.zeros(n, dtype=torch.bool)
    worst_box = worst_score = 0.0
    for i in range(n):  # at most detections_per_img rows: greedy matching over ragged candidates
        free = (fits[i] & ~taken).nonzero().flatten()
        if free.numel() == 0:
            return False, float(box[i].min()), float(score[i].min())
        j = free[box[i, free].argmin()]
        taken[j] = True
        worst_box, worst_score = max(worst_box, float(box[i, j])), max(worst_score, float(score[i, j]))
    return True, worst_box, worst_score
