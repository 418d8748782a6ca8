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
import json
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .config import Config, from_dict, to_dict
from .detector import Detector, resolve_device
from .model import DenseOutputs, RetinaNet

FORMATS = ("onnx", "torchscript")


class ExportableRetinaNet(nn.Module):
    """RetinaNet without the reshapes and anchors: a pure conv graph with one output per level and branch."""

    def __init__(self, model: RetinaNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """images (N, 3, H, W) -> (cls_p3 (N, A*K, H/8, W/8), box_p3 (N, A*4, H/8, W/8), ..., box_p7)."""
        m = self.model
        outs = []
        for f in m.fpn(m.backbone(images)):
            outs += [m.head.cls_logits(m.head.cls_tower(f)), m.head.box_pred(m.head.box_tower(f))]
        return tuple(outs)


def output_names(num_levels: int = 5) -> list[str]:
    return [f"{kind}_p{lvl}" for lvl in range(3, 3 + num_levels) for kind in ("cls", "box")]


def build_anchor_generator(cfg: Config) -> AnchorGenerator:
    a = cfg.model.anchors
    return AnchorGenerator(a.sizes, a.scales, a.ratios, a.strides, a.torchvision_compat)


def dense_outputs(levels: Sequence[Tensor], image_size: tuple[int, int], anchors: AnchorGenerator) -> DenseOutputs:
    """Per-level maps (cls, box, cls, box, ...) -> DenseOutputs, in RetinaNetHead's row order
    (level, location, anchor): logits (N, R, K), deltas (N, R, 4), anchors (R, 4)."""
    a = anchors.num_anchors
    logits, deltas, grids = [], [], []
    for cls, box in zip(levels[0::2], levels[1::2]):
        n, _, h, w = cls.shape
        logits.append(cls.view(n, a, -1, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, -1))
        deltas.append(box.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
        grids.append((h, w))
    return DenseOutputs(torch.cat(logits, 1), torch.cat(deltas, 1), anchors(image_size, grids, logits[0].device),
                        [h * w * a for h, w in grids])


class LevelOutputsModel(nn.Module):
    """Wraps a runtime that maps a padded batch to per-level maps so that it looks like RetinaNet
    (``forward`` returns DenseOutputs); ``Detector(LevelOutputsModel(...), cfg, categories, device)``."""

    def __init__(self, run: Callable[[Tensor], Sequence[Tensor]], anchor_generator: AnchorGenerator):
        super().__init__()
        self.run, self.anchor_generator = run, anchor_generator

    def forward(self, images: Tensor) -> DenseOutputs:
        return dense_outputs(self.run(images), tuple(images.shape[-2:]), self.anchor_generator)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript still works in torch 2.x but warns on every call that it is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _metadata(cfg: Config, categories: list[dict]) -> dict[str, str]:
    return {"retinanet_config": json.dumps(to_dict(cfg)), "retinanet_categories": json.dumps(categories),
            "retinanet_outputs": "per-level logits (N, A*K, H_l, W_l) and deltas (N, A*4, H_l, W_l); "
                                 "post-processing not included"}


def export_model(model: RetinaNet, cfg: Config, categories: list[dict], path: Union[str, Path],
                 fmt: str = "onnx", opset: int = 17) -> Path:
    """Writes ``model`` (on the CPU, eval mode) as ONNX or TorchScript with dynamic batch and image size."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = ExportableRetinaNet(model).cpu().eval()
    side = 2 * cfg.input.size_divisible  # any multiple works; a small one keeps tracing fast
    sample = torch.randn(1, 3, side, side + cfg.input.size_divisible)  # H != W: no axis gets folded into the other
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
    cfg = from_dict(json.loads(meta["retinanet_config"]))
    categories = json.loads(meta["retinanet_categories"])
    return Detector(LevelOutputsModel(run, build_anchor_generator(cfg)), cfg, categories, resolve_device(device))
