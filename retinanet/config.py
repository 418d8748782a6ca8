"""Typed configuration: frozen dataclasses are the schema and the defaults; YAML only overrides.

Defaults follow the paper and Detectron2 (see DESIGN.md section 2). Every value read from YAML or
from a ``key.sub=value`` override is type-checked, and an unknown key is an error that names the
key and suggests the closest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"  # resnet18/34/50/101/152 or mobilenet_v2
    weights: str = ""  # a local state-dict file, a torchvision weights name, or "" (random init)
    norm: str = "frozen_bn"  # frozen_bn | bn | syncbn
    freeze_at: int = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ... (Detectron2 semantics)


@dataclass(frozen=True)
class FPNConfig:
    channels: int = 256
    p6_from: str = "c5"  # c5 (paper, Detectron2) | p5 (torchvision v1)


@dataclass(frozen=True)
class HeadConfig:
    num_convs: int = 4
    norm: str = ""  # "" | gn
    prior_prob: float = 0.01
    prior_init: bool = True  # class bias = -log((1 - pi) / pi); False leaves it at 0


@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    torchvision_compat: bool = False  # int sizes, rounded base anchors, image_size // grid strides


@dataclass(frozen=True)
class MatcherConfig:
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    allow_low_quality: bool = True


@dataclass(frozen=True)
class LossConfig:
    cls_loss: str = "focal"  # focal | focal_star | bce | alpha_bce | modulated | poly1_focal
    alpha: float = 0.25  # < 0 disables alpha weighting
    gamma: float = 2.0
    beta: float = 1.0  # FL* shift
    modulator: str = "power"  # modulated only: power (= focal) | cos | exp | exp_sq
    poly_epsilon: float = 1.0  # poly1_focal only: FL + poly_epsilon * (1 - p_t)^(gamma + 1)
    # Gamma schedule: constant | linear | cosine | step. gamma_start -> gamma_end over training.
    gamma_schedule: str = "constant"
    gamma_start: float = 2.0
    gamma_end: float = 2.0
    gamma_steps: tuple[int, ...] = ()  # step schedule: iterations at which gamma changes
    gamma_values: tuple[float, ...] = ()  # step schedule: gamma before the first step, after each
    # l1: Detectron2's RetinaNet configs (SMOOTH_L1_LOSS_BETA 0), MMDetection and torchvision v1.
    box_loss: str = "l1"  # l1 | smooth_l1 | giou (torchvision v2)
    smooth_l1_beta: float = 0.1  # smooth_l1 only (the paper's Detectron: 0.11); 0 is L1
    box_weight: float = 1.0
    normalize: str = "batch"  # batch | ema | image (torchvision)
    ema_momentum: float = 0.9


@dataclass(frozen=True)
class TestConfig:
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100


@dataclass(frozen=True)
class ModelConfig:
    num_classes: Optional[int] = None  # taken from the dataset when unset
    category_ids: tuple[int, ...] = ()  # dataset category id of each contiguous label
    class_names: tuple[str, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)


@dataclass(frozen=True)
class InputConfig:
    min_size_train: Union[int, tuple[int, ...]] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisible: int = 128  # P7 stride: exact strides on every level
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    flip_prob: float = 0.5
    color_jitter: float = 0.0  # probability of photometric jitter


@dataclass(frozen=True)
class DatasetConfig:
    images: str = ""
    annotations: str = ""


@dataclass(frozen=True)
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: DatasetConfig = field(default_factory=DatasetConfig)
    filter_empty: bool = False  # drop training images without annotations
    skip_bad_images: bool = True  # False: a corrupt or missing image is an error
    demo: bool = False  # generate the built-in synthetic dataset at these paths when it is missing


@dataclass(frozen=True)
class DataloaderConfig:
    num_workers: int = 4
    aspect_ratio_grouping: bool = True


@dataclass(frozen=True)
class SolverConfig:
    ims_per_batch: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm_bias: Optional[float] = None  # None: same as weight_decay
    max_iter: int = 90000
    steps: tuple[int, ...] = (60000, 80000)
    lr_decay: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad_norm: float = 0.0  # 0 disables


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "output"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42
    amp: str = ""  # "" | fp16 (CUDA, with GradScaler) | bf16
    checkpoint_period: int = 5000
    keep_last: int = 3
    eval_period: int = 0  # 0: only at the end
    log_period: int = 20
    skip_nonfinite: bool = False  # True: skip a step with a NaN/Inf loss instead of stopping
    sync_bn: bool = False
    vis_images: int = 4  # val images drawn to TensorBoard after each evaluation


@dataclass(frozen=True)
class EvaluationConfig:
    backend: str = "pycocotools"  # pycocotools | faster_coco_eval
    tta: bool = False
    tta_flip: bool = True
    tta_min_sizes: tuple[int, ...] = ()  # empty: only min_size_test


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dataloader: DataloaderConfig = field(default_factory=DataloaderConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# ---------------------------------------------------------------------------------------------
# Typed merging


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and returns it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _merge(tp(), value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _merge(obj: Any, updates: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for name, value in updates.items():
        if name not in hints:
            close = difflib.get_close_matches(str(name), list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(hints)}"
            raise ConfigError(f"unknown config key '{prefix}{name}'{hint}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping, got {value!r}")
            changes[name] = _merge(current, value, f"{prefix}{name}.")
        else:
            changes[name] = _coerce(value, hints[name], f"{prefix}{name}")
    return dataclasses.replace(obj, **changes)


def merge_dict(cfg: Config, updates: dict) -> Config:
    """Returns ``cfg`` with the nested mapping ``updates`` applied and type-checked."""
    if not isinstance(updates, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(updates).__name__}")
    return _merge(cfg, updates)


def parse_overrides(overrides: list[str]) -> dict:
    """Turns ``["model.num_classes=3", "solver.steps=[10,20]"]`` into a nested mapping."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse value: {e}") from None
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return tree


# Keys whose value is one of a few names: checked when a config is loaded, not deep inside a run.
CHOICES = {
    "model.backbone.name": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2"),
    "model.backbone.norm": ("frozen_bn", "bn", "syncbn"),
    "model.fpn.p6_from": ("c5", "p5"),
    "model.head.norm": ("", "gn"),
    "model.loss.cls_loss": ("focal", "focal_star", "bce", "alpha_bce", "modulated", "poly1_focal"),
    "model.loss.modulator": ("power", "cos", "exp", "exp_sq"),
    "model.loss.box_loss": ("smooth_l1", "l1", "giou"),
    "model.loss.normalize": ("batch", "ema", "image"),
    "model.loss.gamma_schedule": ("constant", "linear", "cosine", "step"),
    "train.amp": ("", "fp16", "bf16"),
    "evaluation.backend": ("pycocotools", "faster_coco_eval"),
}


def validate(cfg: Config) -> Config:
    """Checks the named-choice keys; returns ``cfg`` unchanged."""
    for key, allowed in CHOICES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [a for a in allowed if a], n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}{hint}")
    return cfg


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> Config:
    """Reads defaults, then the YAML file (with optional ``_base_`` chain), then ``key=value`` overrides."""
    cfg = Config()
    if path:
        cfg = merge_dict(cfg, _read_yaml_chain(Path(path)))
    if overrides:
        cfg = merge_dict(cfg, parse_overrides(overrides))
    return validate(cfg)


def _read_yaml_chain(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ chain loops")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("_base_", None)
    if base:
        merged = _read_yaml_chain(path.parent / base, seen + (path.resolve(),))
        _deep_update(merged, data)
        return merged
    return data


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list form, as written to YAML and stored in checkpoints."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: Config, path: Optional[Union[str, Path]] = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def from_dict(data: dict) -> Config:
    return merge_dict(Config(), data)
