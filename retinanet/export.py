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
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .build import build_anchor_generator, resolve_config
from .checkpoint import CheckpointError
from .config import Config
from .config_loader import to_dict
from .detector import Detector, resolve_device
from .fast.fusion import fuse_for_inference
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


def export_model(detector: Detector, path: Union[str, Path], fmt: str = "onnx", opset: int = 17,
                 winograd: bool = True) -> Path:
    """Writes the detector's network as ONNX or TorchScript with dynamic batch
    and image size; its config and categories go into the file. With ``winograd`` (ONNX only), the
    wide 3x3 convs are written as Winograd F(4x4, 3x3) (``winograd.py``): ~1.1x faster in
    onnxruntime on a CPU, slower on GPU runtimes, which choose their own conv algorithms."""
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
            with _quiet_jit():
                traced = torch.jit.trace(net, (sample,), check_trace=False)
                torch.jit.save(traced, str(path), _extra_files=_metadata(cfg, categories))
    return path


def exported_format(path: Union[str, Path, None]) -> Optional[str]:
    """"onnx" or "torchscript" if ``path`` is a file that ``export_model`` could have written, else
    None (e.g. a checkpoint). TorchScript and torch.save files are both zip archives: only TorchScript
    ones hold ``constants.pkl`` (and ``code/``)."""
    if path is None or not Path(path).is_file():
        return None
    if Path(path).suffix == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("/constants.pkl") for n in z.namelist()):
                return "torchscript"
    return None


def ort_session(path: Union[str, Path], providers: Sequence[str] = ("CPUExecutionProvider",),
                threads: Optional[int] = None):
    """An onnxruntime session with every graph optimisation (conv + activation fusion, constant
    folding) and ``threads`` intra-op threads (default: torch's thread count, so that both runtimes
    use the same cores; onnxruntime's own default also spins up one thread per core)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one branch at a time: no oversubscription
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def load_exported(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                  providers: Optional[Sequence[str]] = None, overrides: Sequence[str] = (),
                  threads: Optional[int] = None) -> Detector:
    """A Detector running an exported ``.onnx`` (onnxruntime) or TorchScript file, with the config
    and categories stored in it plus ``overrides`` (``key=value``, e.g. ``model.test.score_thresh=0.3``).
    ``providers`` (onnx only) default: CUDA then CPU when ``device`` is a CUDA device, else CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    device = resolve_device(device)
    if path.suffix == ".onnx":
        if providers is None:
            providers = (["CUDAExecutionProvider"] if device.type == "cuda" else []) + ["CPUExecutionProvider"]
        try:
            session = ort_session(path, providers, threads)
        except Exception as e:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...) share no base
            raise CheckpointError(f"{path}: not a readable ONNX model ({_first_line(e)}); re-export it with "
                                  f"`retinanet export`") from None
        meta = session.get_modelmeta().custom_metadata_map

        def run(images: Tensor) -> list[Tensor]:
            outs = session.run(None, {"images": images.detach().cpu().float().numpy()})
            return [torch.from_numpy(o).to(images.device) for o in outs]
        device = "cpu" if list(providers) == ["CPUExecutionProvider"] else device
    else:
        extra = {"retinanet_config": "", "retinanet_categories": ""}
        try:
            with _quiet_jit():
                run = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable TorchScript model ({_first_line(e)}); re-export it "
                                  f"with `retinanet export`") from None
        meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    if not meta.get("retinanet_config"):
        raise ValueError(f"{path}: not exported by `retinanet export` (no retinanet_config metadata)")
    stored = {"config": json.loads(meta["retinanet_config"]), "categories": json.loads(meta["retinanet_categories"])}
    cfg = resolve_config(None, overrides, stored)
    return Detector(LevelOutputsModel(run, build_anchor_generator(cfg)), cfg, device)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(e).__name__


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
