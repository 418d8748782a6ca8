"""ONNX and TorchScript export, and loading the exported files back as a ``Detector``.

What is in the graph: the network only. It takes the normalised, zero-padded batch (N, 3, H, W)
(H, W multiples of ``input.size_divisible``; any size, any batch) and returns, per level P3-P7,
class logits (N, A*K, H_l, W_l) and box deltas (N, A*4, H_l, W_l): outputs ``cls_p3, box_p3, ...,
cls_p7, box_p7``. Resizing, anchors (computed from the output shapes), decoding, top-k, NMS and
the label mapping run in Python with the same code as the PyTorch model (``LevelOutputsModel``
adapts the runtime so that ``Detector`` and TTA run it unchanged). This keeps the graph free of
data-dependent shapes (NMS, top-k), so any runtime can execute it, and detections match PyTorch's.
The config and categories travel inside the file (ONNX metadata / TorchScript extra files).
"""
from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .build import build_anchor_generator, with_categories
from .config import Config
from .config_loader import from_dict, to_dict
from .detector import Detector
from .model import RetinaNet, dense_outputs
from .outputs import DenseOutputs

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


class LevelOutputsModel(nn.Module):
    """Wraps a runtime that maps a padded batch to per-level maps (cls_p3, box_p3, ...) so that it
    looks like RetinaNet to a Detector: ``forward`` returns DenseOutputs."""

    def __init__(self, run: Callable[[Tensor], Sequence[Tensor]], anchor_generator: AnchorGenerator):
        super().__init__()
        self.run, self.anchor_generator = run, anchor_generator

    def forward(self, images: Tensor) -> DenseOutputs:
        levels = self.run(images)
        return dense_outputs(list(levels[0::2]), list(levels[1::2]), tuple(images.shape[-2:]), self.anchor_generator)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript still works in torch 2.x but warns on every call that it is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _metadata(cfg: Config, categories: list[dict]) -> dict[str, str]:
    # The categories are in the config too; stored apart for readers of the file that are not us.
    return {"retinanet_config": json.dumps(to_dict(cfg)), "retinanet_categories": json.dumps(categories),
            "retinanet_outputs": "per-level logits (N, A*K, H_l, W_l) and deltas (N, A*4, H_l, W_l); "
                                 "post-processing not included"}


def export_model(detector: Detector, path: Union[str, Path], fmt: str = "onnx", opset: int = 17) -> Path:
    """Writes the detector's network as ONNX or TorchScript with dynamic batch
    and image size; its config and categories go into the file."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if not isinstance(detector.model, RetinaNet):
        raise ValueError("only a PyTorch RetinaNet can be exported, not an already exported model")
    cfg, categories = detector.cfg, detector.categories
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A copy: tracing needs the CPU and eval mode, and the caller's model keeps its device and mode.
    net = ExportableRetinaNet(copy.deepcopy(detector.model)).cpu().eval()
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
            with _quiet_jit():
                traced = torch.jit.trace(net, (sample,), check_trace=False)
                torch.jit.save(traced, str(path), _extra_files=_metadata(cfg, categories))
    return path


def load_exported(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                  providers: Sequence[str] = ("CPUExecutionProvider",)) -> Detector:
    """A Detector running an exported ``.onnx`` (onnxruntime) or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=list(providers))
        meta = session.get_modelmeta().custom_metadata_map

        def run(images: Tensor) -> list[Tensor]:
            outs = session.run(None, {"images": images.detach().cpu().float().numpy()})
            return [torch.from_numpy(o).to(images.device) for o in outs]
        device = "cpu" if list(providers) == ["CPUExecutionProvider"] else device
    else:
        extra = {"retinanet_config": "", "retinanet_categories": ""}
        with _quiet_jit():
            run = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    if not meta.get("retinanet_config"):
        raise ValueError(f"{path}: not exported by `retinanet export` (no retinanet_config metadata)")
    cfg = with_categories(from_dict(json.loads(meta["retinanet_config"])), json.loads(meta["retinanet_categories"]),
                          str(path))
    return Detector(LevelOutputsModel(run, build_anchor_generator(cfg)), cfg, device)


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
