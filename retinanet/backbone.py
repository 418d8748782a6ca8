"""Backbones returning C3, C4, C5 (strides 8, 16, 32), built from torchvision's constructors.

Parameter names stay torchvision's under ``body.`` so that torchvision ImageNet state dicts load
unchanged into ``body``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, get_args

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .config import BackboneName, BackboneNorm

BACKBONES = get_args(BackboneName)
RESNETS = tuple(name for name in BACKBONES if name.startswith("resnet"))
NORMS = get_args(BackboneNorm)


def _norm_layer(norm: str) -> Callable[..., nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm in ("bn", "syncbn"):  # syncbn: the trainer converts BatchNorm2d to SyncBatchNorm under DDP
        return nn.BatchNorm2d
    raise ValueError(f"model.backbone.norm: unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


class ResNetBackbone(nn.Module):
    def __init__(self, name: str = "resnet50", norm: str = "frozen_bn", freeze_at: int = 2):
        super().__init__()
        body = getattr(torchvision.models, name)(weights=None, norm_layer=_norm_layer(norm))
        del body.fc, body.avgpool
        self.body = body
        width = 512 if name in ("resnet18", "resnet34") else 2048
        self.out_channels = (width // 4, width // 2, width)
        # Detectron2 semantics: 1 freezes the stem, 2 also res2 (layer1), ... 5 everything.
        stages = [nn.ModuleList([body.conv1, body.bn1]), body.layer1, body.layer2, body.layer3, body.layer4]
        _freeze(body, stages[:freeze_at])

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, 3, H, W) -> [C3 (N, c3, H/8, W/8), C4, C5]."""
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c3 = b.layer2(b.layer1(x))
        c4 = b.layer3(c3)
        return [c3, c4, b.layer4(c4)]


class MobileNetV2Backbone(nn.Module):
    """C3/C4/C5 from ``features[6]``, ``[13]`` and ``[18]`` (32, 96, 1280 channels)."""

    _STAGES = (range(0, 1), range(1, 4), range(4, 7), range(7, 14), range(14, 19))

    def __init__(self, norm: str = "frozen_bn", freeze_at: int = 2):
        super().__init__()
        body = torchvision.models.mobilenet_v2(weights=None, norm_layer=_norm_layer(norm))
        del body.classifier
        self.body = body
        self.out_channels = (32, 96, 1280)
        _freeze(body, [body.features[i] for stage in self._STAGES[:freeze_at] for i in stage])

    def forward(self, x: Tensor) -> list[Tensor]:
        f = self.body.features
        c3 = f[:7](x)
        c4 = f[7:14](c3)
        return [c3, c4, f[14:](c4)]


def _freeze(body: nn.Module, modules: list[nn.Module]) -> None:
    """No gradients for ``modules``; their BatchNorms become FrozenBatchNorm2d so that the running
    statistics stop moving too (Detectron2 does the same)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    _freeze_batchnorm(body)


def _freeze_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not child.weight.requires_grad:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def build_backbone(name: str, norm: str = "frozen_bn", freeze_at: int = 2, weights: str = "") -> nn.Module:
    if name in RESNETS:
        backbone = ResNetBackbone(name, norm, freeze_at)
    elif name == "mobilenet_v2":
        backbone = MobileNetV2Backbone(norm, freeze_at)
    else:
        raise ValueError(f"model.backbone.name: unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if weights:
        load_backbone_weights(backbone.body, weights)
    return backbone


def load_backbone_weights(body: nn.Module, weights: str) -> None:
    """Loads a torchvision-format ImageNet state dict from a file, or by torchvision weights name."""
    path = Path(weights).expanduser()
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
            raise ValueError(f"model.backbone.weights: cannot load {path}: {e}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    elif "/" in weights or weights.endswith((".pth", ".pt")):
        raise FileNotFoundError(f"model.backbone.weights: file not found: {weights}")
    else:
        state = download_torchvision_weights(weights, "model.backbone.weights", "ResNet50_Weights.IMAGENET1K_V1")
    own = body.state_dict()
    # load_state_dict(strict=False) still raises a bare RuntimeError on a shape mismatch (e.g. a
    # resnet18 file for a resnet50): report it like missing keys, naming the file.
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing, unexpected = body.load_state_dict({k: v for k, v in state.items() if k not in own
                                                or tuple(v.shape) == tuple(own[k].shape)}, strict=False)
    # The classifier of an ImageNet checkpoint is not part of a detection backbone.
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "classifier."))]
    if missing or unexpected or shapes:
        raise ValueError(f"model.backbone.weights: {weights} does not fit this backbone; shape mismatches "
                         f"{shapes[:4]}, missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")


def download_torchvision_weights(name: str, key: str, example: str) -> dict:
    """The state dict of torchvision's weights ``name``, for the config ``key`` (errors name it; ``example``
    is a valid name to suggest). Offline, the error gives the file's URL and says to pass a local file."""
    try:
        enum = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"{key}: {name!r} is neither a file nor a torchvision weights name such as "
                         f"'{example}'") from None
    try:
        return enum.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise ValueError(f"{key}: cannot download {name} ({type(e).__name__}: {e}). Offline? Download {enum.url} "
                         f"on a machine that is online and set {key} to that file") from None
