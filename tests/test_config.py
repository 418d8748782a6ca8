from __future__ import annotations

import dataclasses

import pytest

from retinanet.config import Config, ConfigError
from retinanet.config_loader import dump_config, load_config, parse_overrides, to_dict

from conftest import TV_CONFIGS


def test_defaults_follow_the_paper():
    cfg = load_config()
    assert cfg == Config()
    m = cfg.model
    assert m.anchors.sizes == (32, 64, 128, 256, 512) and m.anchors.strides == (8, 16, 32, 64, 128)
    assert m.anchors.ratios == (0.5, 1.0, 2.0) and m.anchors.scales[2] == pytest.approx(2 ** (2 / 3))
    assert (m.matcher.fg_iou, m.matcher.bg_iou) == (0.5, 0.4)
    assert (m.loss.alpha, m.loss.gamma, m.head.prior_prob) == (0.25, 2.0, 0.01)
    assert (m.test.score_thresh, m.test.topk_candidates, m.test.nms_thresh, m.test.detections_per_img) == \
        (0.05, 1000, 0.5, 100)
    assert (cfg.solver.base_lr, cfg.solver.momentum, cfg.solver.weight_decay) == (0.01, 0.9, 1e-4)
    assert m.backbone.freeze_at == 2 and m.fpn.p6_from == "c5" and m.num_classes is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_classes = 3  # type: ignore[misc]


def test_yaml_file_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_classes: 7\n  fpn: {p6_from: p5}\nsolver:\n  steps: [10, 20]\n  base_lr: 1\n")
    cfg = load_config(path)
    assert cfg.model.num_classes == 7 and cfg.model.fpn.p6_from == "p5"
    assert cfg.solver.steps == (10, 20)
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)  # int accepted for a float
    assert cfg.model.fpn.channels == 256  # untouched siblings keep their defaults


def test_torchvision_configs_load():
    v1 = load_config(TV_CONFIGS / "retinanet_resnet50_fpn_coco.yaml")
    v2 = load_config(TV_CONFIGS / "retinanet_resnet50_fpn_v2_coco.yaml")
    assert v1.model.num_classes == len(v1.model.category_ids) == len(v1.model.class_names) == 91
    assert (v1.model.fpn.p6_from, v2.model.fpn.p6_from, v2.model.head.norm) == ("p5", "c5", "gn")
    assert v1.model.anchors.torchvision_compat and (v1.model.loss.box_loss, v2.model.loss.box_loss) == ("l1", "giou")


def test_dotted_overrides_including_lists():
    cfg = load_config(None, ["model.num_classes=3", "solver.steps=[100, 200]", "model.anchors.sizes=[16,32,64,128,256]",
                             "input.min_size_train=[640,800]", "model.backbone.weights=", "train.amp=bf16",
                             "model.head.prior_init=false"])
    assert cfg.model.num_classes == 3 and cfg.solver.steps == (100, 200)
    assert cfg.model.anchors.sizes == (16.0, 32.0, 64.0, 128.0, 256.0)
    assert cfg.input.min_size_train == (640, 800)
    assert cfg.model.backbone.weights == "" and cfg.train.amp == "bf16" and cfg.model.head.prior_init is False
    assert load_config(None, ["input.min_size_train=512"]).input.min_size_train == 512  # int | tuple union
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_overrides_apply_after_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {num_classes: 7}\n")
    assert load_config(path, ["model.num_classes=2"]).model.num_classes == 2


@pytest.mark.parametrize("override, key, suggestion", [
    ("model.num_clases=3", "model.num_clases", "model.num_classes"),
    ("solver.base_lrr=0.1", "solver.base_lrr", "solver.base_lr"),
    ("model.backbone.nmae=resnet18", "model.backbone.nmae", "model.backbone.name"),
])
def test_unknown_key_names_it_and_suggests_the_closest(override, key, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value) and f"'{suggestion}'" in str(e.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  anchors: {ratio: [1]}\n")
    with pytest.raises(ConfigError, match=r"model\.anchors\.ratio.*model\.anchors\.ratios"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("model.num_classes=three", "model.num_classes"),
    ("solver.base_lr=fast", "solver.base_lr"),
    ("solver.steps=5", "solver.steps"),
    ("solver.steps=[1, x]", "solver.steps[1]"),
    ("model.head.prior_init=3", "model.head.prior_init"),
    ("train.seed=1.5", "train.seed"),
    ("model.box_weights=[1,1,1]", "model.box_weights"),
    ("model.backbone=resnet18", "model.backbone"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"{key}:" in str(e.value)


def test_bad_yaml_and_missing_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["model.num_classes"])


def test_dump_load_round_trip(tmp_path):
    cfg = load_config(TV_CONFIGS / "retinanet_resnet50_fpn_v2_coco.yaml",
                      ["solver.steps=[3,4]", "model.loss.gamma=1.5"])
    path = tmp_path / "dumped.yaml"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert load_config(to_dict(cfg)) == cfg


def test_base_chain(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  num_classes: 5\n  fpn: {channels: 64, p6_from: p5}\nsolver: {max_iter: 10, steps: [], warmup_iters: 5}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("_base_: ../base.yaml\nmodel:\n  fpn: {channels: 128}\n")
    (tmp_path / "sub" / "top.yaml").write_text("_base_: mid.yaml\nsolver: {max_iter: 20}\n")
    cfg = load_config(tmp_path / "sub" / "top.yaml")
    assert cfg.model.num_classes == 5  # from the root
    assert cfg.model.fpn.channels == 128 and cfg.model.fpn.p6_from == "p5"  # deep merge keeps the sibling
    assert cfg.solver.max_iter == 20
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")


def test_named_choices_are_checked_at_load_time():
    with pytest.raises(ConfigError, match=r"model.loss.cls_loss: 'focall' .*did you mean 'focal'"):
        load_config(None, ["model.loss.cls_loss=focall"])
    with pytest.raises(ConfigError, match=r"evaluation.backend: 'faster-coco-eval'.*'faster_coco_eval'"):
        load_config(None, ["evaluation.backend=faster-coco-eval"])
    with pytest.raises(ConfigError, match="model.backbone.name"):
        load_config(None, ["model.backbone.name=vgg16"])
    assert load_config(None, ["model.head.norm=gn"]).model.head.norm == "gn"


def test_code_knows_every_named_choice():
    # The schema's Literal types are the lists; code that keeps its own table must cover exactly them.
    from typing import get_args

    from retinanet import config, criterion, modulated
    from retinanet.engine.amp import AMP_MODES
    assert set(AMP_MODES) == set(get_args(config.AmpMode))
    assert set(modulated.MODULATOR_NAMES) == set(get_args(config.ModulatorName))
    assert set(criterion.BOX_LOSSES) == set(get_args(config.BoxLoss))
    assert set(criterion.NORMALIZERS) == set(get_args(config.Normalizer))
