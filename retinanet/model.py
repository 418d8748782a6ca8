"""The RetinaNet network: backbone -> FPN -> shared head, over multi-scale anchors."""
from __future__ import annotations

from torch import Tensor, nn

from .anchors import AnchorGenerator
from .fpn import FPN
from .head import RetinaNetHead
from .outputs import DenseOutputs, flatten_levels


class RetinaNet(nn.Module):
    """Returns raw dense outputs; the loss (criterion) and decoding (postprocess) live elsewhere."""

    def __init__(self, backbone: nn.Module, fpn: FPN, head: RetinaNetHead, anchor_generator: AnchorGenerator):
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.anchor_generator = anchor_generator

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def level_maps(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level head maps (see ``RetinaNetHead.forward``): the part that export puts in a graph."""
        return self.head(self.fpn(self.backbone(images)))

    def forward(self, images: Tensor) -> DenseOutputs:
        """``images`` (N, 3, H, W): normalised, zero-padded batch."""
        return dense_outputs(*self.level_maps(images), tuple(images.shape[-2:]), self.anchor_generator)


def dense_outputs(cls_maps: list[Tensor], box_maps: list[Tensor], image_size: tuple[int, int],
                  anchor_generator: AnchorGenerator) -> DenseOutputs:
    """Per-level maps of a padded batch of ``image_size`` (H, W) -> DenseOutputs with their anchors."""
    logits, deltas = flatten_levels(cls_maps, box_maps, anchor_generator.num_anchors)
    grids = [tuple(m.shape[-2:]) for m in cls_maps]
    anchors = anchor_generator(image_size, grids, logits.device)
    return DenseOutputs(logits, deltas, anchors, [h * w * anchor_generator.num_anchors for h, w in grids])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))
