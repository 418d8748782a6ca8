"""Running files written by ``retinanet export`` (``.onnx`` in onnxruntime, TorchScript) as a
``Detector``, and ``load_detector``, which opens any weights file: an exported one here, a checkpoint
through ``Detector.from_config``.
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
from .build import ConfigSource, build_anchor_generator, resolve_config
from .checkpoint import CheckpointError
from .detector import Detector, resolve_device
from .model import dense_outputs
from .outputs import DenseOutputs


def load_detector(weights: Union[str, Path, None], config: ConfigSource = None,
                  device: Union[str, torch.device, None] = None, overrides: Sequence[str] = (),
                  classes_from_val: bool = False) -> Detector:
    """A Detector for ``weights``: a file written by ``retinanet export`` carries its own config and
    categories (a given ``config`` is ignored with a warning; ``overrides`` apply to the stored one);
    anything else (our checkpoint, a torchvision state dict, None) goes to ``Detector.from_config``."""
    if exported_format(weights):
        if config is not None:
            warnings.warn(f"{weights} carries its own config; --config {config} is ignored", stacklevel=2)
        return load_exported(weights, device or "cpu", overrides=overrides)
    return Detector.from_config(config, weights, device, overrides, classes_from_val)


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
def quiet_jit() -> Iterator[None]:
    """TorchScript still works in torch 2.x but warns on every call that it is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


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
            with quiet_jit():
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
