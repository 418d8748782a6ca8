"""The config schema: frozen dataclasses hold every setting and its default; ``validate`` checks values.

Defaults follow the paper and Detectron2 (RetinaNet R50-FPN 1x). A key that takes one of a few names
has a ``Literal`` type below; the modules that implement the names read their lists from here. Reading
YAML files and ``key.sub=value`` overrides into these classes, checked against the types, is
``config_loader``'s job. This module imports nothing of the package: the schema does not depend on
the code it configures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

BackboneName = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2"]
# syncbn: BatchNorm synchronised across processes under DDP
BackboneNorm = Literal["frozen_bn", "bn", "syncbn"]
P6Source = Literal["c5", "p5"]  # c5 (paper, Detectron2) | p5 (torchvision v1)
HeadNorm = Literal["", "gn"]
ClassLoss = Literal["focal", "focal_star", "bce", "alpha_bce", "modulated", "poly1_focal"]
ModulatorName = Literal["power", "cos", "exp", "exp_sq"]
GammaSchedule = Literal["constant", "linear", "cosine", "step"]
BoxLoss = Literal["l1", "smooth_l1", "giou"]  # giou: torchvision v2
Normalizer = Literal["batch", "ema", "image"]  # image: torchvision
AmpMode = Literal["", "fp16", "bf16"]  # fp16: CUDA, with GradScaler
EvalBackend = Literal["pycocotools", "faster_coco_eval"]  # faster_coco_eval: C++, the same AP
MetricName = Literal["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"]  # COCOeval.stats order


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value that is not allowed."""


@dataclass(frozen=True)
class BackboneConfig:
    name: BackboneName = "resnet50"
    weights: str = ""  # a local state-dict file, a torchvision weights name, or "" (random init)
    norm: BackboneNorm = "frozen_bn"
    freeze_at: int = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ... (Detectron2 semantics)


@dataclass(frozen=True)
class FPNConfig:
    channels: int = 256
    p6_from: P6Source = "c5"


@dataclass(frozen=True)
class HeadConfig:
    num_convs: int = 4
    norm: HeadNorm = ""
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
    cls_loss: ClassLoss = "focal"
    alpha: float = 0.25  # < 0 disables alpha weighting
    # Focal gamma at iteration 0. gamma_schedule decides how it moves (schedules.gamma_at):
    # constant; linear or cosine from gamma to gamma_end over training; step: gamma_values[i] from
    # iteration gamma_steps[i] on.
    gamma: float = 2.0
    gamma_schedule: GammaSchedule = "constant"
    gamma_end: float = 2.0
    gamma_steps: tuple[int, ...] = ()
    gamma_values: tuple[float, ...] = ()
    beta: float = 1.0  # FL* shift
    modulator: ModulatorName = "power"  # modulated only; power is the focal term
    poly_epsilon: float = 1.0  # poly1_focal only: FL + poly_epsilon * (1 - p_t)^(gamma + 1)
    # l1: Detectron2's RetinaNet configs (SMOOTH_L1_LOSS_BETA 0), MMDetection and torchvision v1.
    box_loss: BoxLoss = "l1"
    smooth_l1_beta: float = 0.1  # smooth_l1 only (the paper's Detectron: 0.11); 0 is L1
    box_weight: float = 1.0
    normalize: Normalizer = "batch"
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
    # Fine-tuning: start training from another detector (our checkpoint, a torchvision RetinaNet state
    # dict file, or a torchvision weights name); every tensor whose name and shape fit is loaded.
    weights: str = ""
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
    fast: bool = True  # retinanet/fast/ (same results to float rounding); false: the plain reference path


@dataclass(frozen=True)
class InputConfig:
    min_size_train: Union[int, tuple[int, ...]] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    size_divisible: int = 128  # P7 stride: exact strides on every level
    flip_prob: float = 0.5
    color_jitter: float = 0.0  # probability of photometric jitter
    # Large images: train on random crop_train x crop_train crops of the image scaled by crop_scale instead
    # of shrinking it (0: off). Boxes are cut at the crop border and kept if >= crop_min_visibility of their
    # area is inside; crop_background_prob of the crops are drawn anywhere (they may hold no object), the
    # rest hold at least one object.
    crop_train: int = 0
    crop_scale: float = 1.0
    crop_min_visibility: float = 0.5
    crop_background_prob: float = 0.1
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


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
    # Seconds without a batch from the workers before the run stops with an error (never a silent hang).
    timeout: float = 300.0


@dataclass(frozen=True)
class SolverConfig:
    max_iter: int = 90000
    steps: tuple[int, ...] = (60000, 80000)
    lr_decay: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    ims_per_batch: int = 16
    base_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm_bias: Optional[float] = None  # None: same as weight_decay
    clip_grad_norm: float = 0.0  # 0 disables


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "output"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42
    amp: AmpMode = ""  # "": fp32
    checkpoint_period: int = 5000
    keep_last: int = 3
    eval_period: int = 0  # 0: only at the end
    log_period: int = 20
    skip_nonfinite: bool = False  # True: skip a step with a NaN/Inf loss instead of stopping
    vis_images: int = 4  # val images drawn to TensorBoard after each evaluation
    best_metric: MetricName = "AP"  # model_best.pth keeps the weights with the highest value of this metric
    patience: int = 0  # stop after this many evaluations without improvement of best_metric; 0 disables


@dataclass(frozen=True)
class EvaluationConfig:
    backend: EvalBackend = "faster_coco_eval"
    tta: bool = False
    tta_flip: bool = True
    tta_min_sizes: tuple[int, ...] = ()  # empty: only min_size_test
    report: bool = True  # write report.html, PR curves, confusion matrix and per-class table beside metrics.json
    report_score_thresh: float = 0.3  # detections counted by the confusion matrix and the gallery
    report_images: int = 24  # val images in the report's gallery (worst first)
    # COCO's largest maxDets (100). Dense scenes need more: AP/AR also come at this limit (AP@N, AR@N),
    # and the per-image detection limit rises to it.
    max_dets: int = 100
    # Tiled inference (eval, infer, Detector.predict) for large images: tiles of `tile` px (0: off) at native
    # resolution, overlapping by tile_overlap; merged by nms (pooled candidates) or nmm (SAHI's greedy
    # merging); tile_full_pass adds the whole image at the test size for objects larger than a tile.
    tile: int = 0
    tile_overlap: float = 0.2
    tile_merge: str = "nms"
    tile_full_pass: bool = False


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dataloader: DataloaderConfig = field(default_factory=DataloaderConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


def gamma_steps_problem(loss: LossConfig) -> Optional[str]:
    """Why a step gamma schedule cannot run, or None."""
    if loss.gamma_schedule == "step" and len(loss.gamma_values) != len(loss.gamma_steps):
        return (f"model.loss.gamma_values needs one value per entry of gamma_steps ({len(loss.gamma_values)} vs "
                f"{len(loss.gamma_steps)}); gamma holds the value before the first")
    return None


def validate(cfg: Config) -> Config:
    """Checks the values a run cannot start with (the loader has checked each value's type and
    named choices); returns ``cfg`` unchanged. Runs when a config is loaded, so that a bad value
    fails before any work, not deep inside a run."""
    s, loss = cfg.solver, cfg.model.loss
    problems = []
    if s.max_iter <= 0:
        problems.append(f"solver.max_iter must be > 0, got {s.max_iter}")
    if any(b <= a for a, b in zip(s.steps, s.steps[1:])):
        problems.append(f"solver.steps must be strictly increasing, got {list(s.steps)}")
    elif s.max_iter > 0 and any(not 0 < v < s.max_iter for v in s.steps):
        # A step at or past max_iter never happens: the schedule would silently differ from the one asked for.
        problems.append(f"solver.steps must lie in (0, solver.max_iter={s.max_iter}), got {list(s.steps)}; when "
                        f"shortening a run, scale the steps too (or set solver.steps=[])")
    if not 0 < s.base_lr < float("inf"):  # also catches NaN
        problems.append(f"solver.base_lr must be a positive number, got {s.base_lr}")
    if s.warmup_iters < 0:
        problems.append(f"solver.warmup_iters must be >= 0, got {s.warmup_iters}")
    elif s.max_iter > 0 and s.warmup_iters > s.max_iter:
        problems.append(f"solver.warmup_iters ({s.warmup_iters}) must be <= solver.max_iter ({s.max_iter})")
    t = cfg.train
    for key, value, low in (("train.log_period", t.log_period, 1), ("train.keep_last", t.keep_last, 1),
                            ("train.checkpoint_period", t.checkpoint_period, 0),
                            ("train.eval_period", t.eval_period, 0)):
        if value < low:
            problems.append(f"{key} must be >= {low}, got {value}")
    if cfg.train.patience < 0:
        problems.append(f"train.patience must be >= 0, got {cfg.train.patience}")
    if s.ims_per_batch < 1:
        problems.append(f"solver.ims_per_batch must be >= 1, got {s.ims_per_batch}")
    if cfg.dataloader.num_workers < 0:
        problems.append(f"dataloader.num_workers must be >= 0, got {cfg.dataloader.num_workers}")
    i = cfg.input
    if i.crop_train and not (i.crop_train >= 32 and i.crop_scale > 0 and 0 <= i.crop_min_visibility <= 1
                             and 0 <= i.crop_background_prob <= 1):
        problems.append(f"input.crop_train must be 0 (off) or >= 32 px, crop_scale > 0, crop_min_visibility and "
                        f"crop_background_prob in [0, 1]; got crop_train={i.crop_train}, crop_scale={i.crop_scale}, "
                        f"crop_min_visibility={i.crop_min_visibility}, crop_background_prob={i.crop_background_prob}")
    ev = cfg.evaluation
    if ev.tile and (ev.tile < 32 or not 0 <= ev.tile_overlap < 1 or ev.tile_merge not in ("nms", "nmm")):
        problems.append(f"evaluation.tile must be 0 (off) or >= 32 px, tile_overlap in [0, 1), tile_merge nms or "
                        f"nmm; got tile={ev.tile}, tile_overlap={ev.tile_overlap}, tile_merge={ev.tile_merge!r}")
    if cfg.evaluation.max_dets < 100:
        problems.append(f"evaluation.max_dets must be >= 100 (COCO's own limit), got {cfg.evaluation.max_dets}")
    if cfg.dataloader.timeout <= 0:
        problems.append(f"dataloader.timeout must be > 0 seconds, got {cfg.dataloader.timeout}")
    if problem := gamma_steps_problem(loss):
        problems.append(problem)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg
