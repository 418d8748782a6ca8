"""Static int8 quantization of an exported ONNX network with onnxruntime's own tools
(``quantize_static``, QDQ format, per-channel int8 weights, uint8 activations), calibrated on real
images fed through the Detector's preprocessing (resize, normalise, pad: what inference feeds the graph),
and the AP check that ``retinanet export --int8`` runs before it accepts the file.

The quantized graph is the plain conv graph (``export_model(..., winograd=False)``): onnxruntime fuses
each DequantizeLinear -> Conv -> QuantizeLinear into an integer conv (VNNI / AMX on x86), and Winograd's
input and output transforms would have to run in int8, where they lose precision.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

from .config import Config
from .config_loader import load_config
from .data.labels import IMAGE_EXTENSIONS
from .data.validate import check_image_paths
from .detector import Detector
from .preprocess import ImageInput

if TYPE_CHECKING:
    import onnx

METHODS = ("minmax", "entropy", "percentile")


def calibration_images(source: Union[str, Path], count: int) -> list[Path]:
    """``count`` images spread evenly over a folder's image files (sorted by name), or over the
    images of a config's ``data.train`` (its ``data.val`` when no train set is given)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif source.is_file():
        data = load_config(source).data
        split = data.train if data.train.annotations else data.val
        if not split.annotations or not split.images:
            raise ValueError(f"--calibration {source}: sets neither data.train nor data.val (images and annotations)")
        images = sorted(json.loads(Path(split.annotations).read_text())["images"], key=lambda im: im["id"])
        check_image_paths(images, split.images, split.annotations)  # no file name leads out of the image root
        files = [Path(split.images) / im["file_name"] for im in images]
    else:
        raise FileNotFoundError(f"--calibration: no such folder or config file: {source}")
    if not files:
        raise ValueError(f"--calibration {source}: no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) in it")
    step = max(1, len(files) // count)
    return files[::step][:count]


def _reader(detector: Detector, files: Sequence[ImageInput]):
    from onnxruntime.quantization import CalibrationDataReader
    # One padded batch, fed an image at a time: onnxruntime's histogram calibrators (entropy,
    # percentile) stack each tensor over the images, so every image needs the same shape.
    batch = detector.preprocess(list(files))[0].cpu().numpy()

    class Reader(CalibrationDataReader):
        """One preprocessed image (1, 3, H, W) per call."""

        def __init__(self) -> None:
            self.items: Iterator[int] = iter(range(len(batch)))

        def get_next(self) -> Optional[dict]:
            i = next(self.items, None)
            return None if i is None else {"images": batch[i:i + 1]}

        def rewind(self) -> None:
            self.items = iter(range(len(batch)))
    return Reader()


def predictor_convs(model: onnx.ModelProto) -> list[str]:
    """The nodes that write the graph's outputs: the last class and box convs of every level."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if set(n.output) & outputs]


def quantize_onnx(fp32_path: Union[str, Path], int8_path: Union[str, Path], detector: Detector,
                  files: Sequence[ImageInput], method: str = "minmax", keep_predictors_fp32: bool = False,
                  keep_fp32: Sequence[str] = ()) -> Path:
    """Writes ``int8_path``, the static int8 version of the plain-conv ONNX file ``fp32_path``,
    calibrated on ``files`` (image paths, arrays or tensors) preprocessed by ``detector``.
    ``keep_predictors_fp32`` leaves the convs that write the outputs in fp32, ``keep_fp32`` every node
    whose name contains one of its strings (e.g. "/backbone/"). The file keeps the fp32
    file's metadata and gains ``retinanet_int8`` (JSON: calibration method and image count, the
    quantized and the fp32 nodes)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if method not in METHODS:
        raise ValueError(f"--calibration-method: expected one of {', '.join(METHODS)}, got {method!r}")
    int8_path = Path(int8_path)
    graph = onnx.load(str(fp32_path))
    excluded = (predictor_convs(graph) if keep_predictors_fp32 else []) + [
        n.name for n in graph.graph.node if any(k in n.name for k in keep_fp32)]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph cleanup, as onnxruntime recommends before quantizing; no symbolic
        # shapes (H, W are dynamic and nothing here needs them).
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_path), _reader(detector, files), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method])
    model = onnx.load(str(int8_path))
    # Integer kernels run where a node reads dequantized inputs and its output is quantized again
    # (onnxruntime fuses DQ -> op -> Q); excluded nodes may sit between DQ and Q but compute in fp32.
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_in = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    compute = [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    quantized = [n.name for n in compute
                 if n.name not in excluded and dq_out & set(n.input) and q_in & set(n.output)]
    info = {"calibration": method, "calibration_images": len(files), "format": "QDQ, per-channel int8 weights, "
            "uint8 activations", "quantized_nodes": quantized,
            "fp32_nodes": [n.name for n in compute if n.name not in quantized]}
    del model.metadata_props[:]
    for prop in graph.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key="retinanet_int8", value=json.dumps(info))
    onnx.save(model, str(int8_path))
    return int8_path


def val_set(calibration: Union[str, Path], cfg: Config) -> tuple[str, str]:
    """(images folder, annotations file) the AP check scores: the ``calibration`` config's data.val,
    else (a folder) ``cfg``'s own."""
    val = load_config(calibration).data.val if Path(calibration).is_file() else cfg.data.val
    if not (val.images and val.annotations and Path(val.annotations).is_file()):
        raise ValueError(f"the int8 AP check needs a val set: data.val.annotations={val.annotations!r} is not a file "
                         f"(give --calibration a config with one, pass data.val.images=... data.val.annotations=..., "
                         f"or skip the check with --no-verify)")
    return val.images, val.annotations


def onnx_ap(path: Union[str, Path], images: str, annotations: str) -> float:
    """COCO AP (0-100) of an exported file on the images of ``annotations`` under ``images``."""
    from .evaluation import inference_on_coco, load_coco
    from .runtime import load_exported
    _, evaluator = inference_on_coco(load_exported(path), images, load_coco(annotations), progress=False)
    return float(evaluator.evaluate()["AP"])
