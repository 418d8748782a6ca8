from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from retinanet.backbone import build_backbone

from conftest import SHARED


@pytest.mark.parametrize("name, channels", [("resnet18", (128, 256, 512)), ("resnet50", (512, 1024, 2048)),
                                            ("mobilenet_v2", (32, 96, 1280))])
def test_output_shapes_and_strides(name, channels):
    backbone = build_backbone(name).eval()
    assert backbone.out_channels == channels
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, (8, 16, 32))]


def _trainable(backbone) -> set[str]:
    return {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}


def test_resnet_freeze_at():
    assert _trainable(build_backbone("resnet18", freeze_at=0)) == {"conv1", "layer1", "layer2", "layer3", "layer4"}
    assert _trainable(build_backbone("resnet18", freeze_at=1)) == {"layer1", "layer2", "layer3", "layer4"}
    assert _trainable(build_backbone("resnet18", freeze_at=2)) == {"layer2", "layer3", "layer4"}
    assert _trainable(build_backbone("resnet18", freeze_at=4)) == {"layer4"}
    assert _trainable(build_backbone("resnet18", freeze_at=5)) == set()
    bn = build_backbone("resnet18", norm="bn", freeze_at=1)  # the frozen stem's bn1 becomes FrozenBatchNorm2d
    assert {n for n, p in bn.named_parameters() if not p.requires_grad} == {"body.conv1.weight"}
    assert isinstance(build_backbone("resnet18").body.bn1, FrozenBatchNorm2d)
    assert isinstance(bn.body.bn1, FrozenBatchNorm2d)
    assert isinstance(bn.body.layer1[0].bn1, torch.nn.BatchNorm2d)


def test_mobilenet_freeze_at():
    frozen = {n.split(".")[2] for n, p in build_backbone("mobilenet_v2", freeze_at=2, norm="bn").named_parameters()
              if not p.requires_grad}
    assert frozen == {"0", "1", "2", "3"}  # stem (features[0]) + the stride-4 stage (features[1:4])


def test_unknown_backbone_and_norm():
    with pytest.raises(ValueError, match="model.backbone.name.*resnet99"):
        build_backbone("resnet99")
    with pytest.raises(ValueError, match="model.backbone.norm.*gn"):
        build_backbone("resnet18", norm="gn")


def test_loads_a_torchvision_state_dict_file(tmp_path):
    reference = torchvision.models.resnet18()  # random: every tensor differs from our own init
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.* and num_batches_tracked
    backbone = build_backbone("resnet18", weights=str(path))
    for key, value in reference.state_dict().items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(backbone.body.state_dict()[key], value), key
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "wrapped.pth")
    wrapped = build_backbone("resnet18", weights=str(tmp_path / "wrapped.pth"))
    assert torch.equal(wrapped.body.conv1.weight, reference.conv1.weight)


def test_bad_weight_files(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18.pth does not fit.*shape mismatches.*layer1.0.conv1.weight"):
        build_backbone("resnet50", weights=str(tmp_path / "r18.pth"))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "nothere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "junk.pth"))


def test_unknown_torchvision_weights_name():
    with pytest.raises(ValueError, match="ResNet50_Weights.IMAGENET9K"):
        build_backbone("resnet18", weights="ResNet50_Weights.IMAGENET9K")


def test_offline_download_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError) as e:  # a ValueError: the CLI prints it as one line
        build_backbone("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    msg = str(e.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in msg and "Offline" in msg and "resnet18-" in msg  # names the URL


def test_mobilenet_shared_weights_load():
    path = SHARED / "weights" / "mobilenet_v2_imagenet_features.pth"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    backbone = build_backbone("mobilenet_v2", weights=str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(backbone.body.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(backbone.body.features[18][1].running_var, state["features.18.1.running_var"])


def test_frozen_stages_with_bn_get_frozen_batchnorm():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from retinanet.backbone import build_backbone

    bb = build_backbone("resnet18", norm="bn", freeze_at=2)
    assert isinstance(bb.body.bn1, FrozenBatchNorm2d)
    assert isinstance(bb.body.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(bb.body.layer2[0].bn1, torch.nn.BatchNorm2d)
    bb.train()
    before = bb.body.bn1.running_mean.clone()
    bb(torch.rand(2, 3, 64, 64) * 5)
    assert torch.equal(bb.body.bn1.running_mean, before)
    mb = build_backbone("mobilenet_v2", norm="bn", freeze_at=2)
    assert isinstance(mb.body.features[0][1], FrozenBatchNorm2d)
    assert isinstance(mb.body.features[4].conv[0][1], torch.nn.BatchNorm2d)
