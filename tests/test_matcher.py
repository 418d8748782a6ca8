from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.ops import box_iou

from retinanet.matcher import BACKGROUND, IGNORE, Matcher, crowd_ioa
from retinanet.matcher import box_iou as our_box_iou


def _random_boxes(n: int, size: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 2 + 4
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", range(5))
def test_equals_torchvision_on_random_boxes(seed):
    torch.manual_seed(seed)
    gt, anchors = _random_boxes(int(torch.randint(1, 12, ()))), _random_boxes(500)
    anchors = torch.cat([anchors, gt[:2].round()])  # exact and near-exact hits, some ties
    expected = TVMatcher(0.5, 0.4, allow_low_quality_matches=True)(box_iou(gt, anchors))
    assert torch.equal(Matcher(0.5, 0.4, True)(gt, anchors), expected)
    expected = TVMatcher(0.5, 0.4, allow_low_quality_matches=False)(box_iou(gt, anchors))
    assert torch.equal(Matcher(0.5, 0.4, False)(gt, anchors), expected)


def test_encoding_matches_torchvision():
    assert (BACKGROUND, IGNORE) == (TVMatcher.BELOW_LOW_THRESHOLD, TVMatcher.BETWEEN_THRESHOLDS)


def test_thresholds_and_ignore_band():
    anchor = torch.tensor([[0.0, 0, 10, 10]])
    m = Matcher(0.5, 0.4, allow_low_quality=False)
    # IoU 100 / area of the gt (it contains the anchor): 0.5, 0.45, 0.4, 0.39
    for height, expected in [(20, 0), (100 / 0.45 / 10, IGNORE), (25, IGNORE), (100 / 0.39 / 10, BACKGROUND)]:
        gt = torch.tensor([[0.0, 0, 10, height]])
        assert m(gt, anchor).tolist() == [expected], height


def test_low_quality_match_keeps_the_anchors_own_best_gt():
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]])
    gt = torch.tensor([[0.0, 0, 10, 22],    # IoU 0.45 with anchor 0: ignore band
                       [5, 0, 15, 10]])     # IoU 0.33 with anchor 0, its best anchor
    assert Matcher(0.5, 0.4, False)(gt, anchors).tolist() == [IGNORE, BACKGROUND]
    # Anchor 0 is claimed by both gts; it keeps gt 0, its own highest IoU (not the last claimant).
    assert Matcher(0.5, 0.4, True)(gt, anchors).tolist() == [0, BACKGROUND]
    assert torch.equal(Matcher(0.5, 0.4, True)(gt, anchors), TVMatcher(0.5, 0.4, True)(box_iou(gt, anchors)))


def test_low_quality_ties_all_claimed_and_zero_iou_gt_claims_nothing():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [300, 300, 310, 310]])
    gt = torch.tensor([[5.0, 0, 15, 10],  # IoU 1/3 with anchors 0 and 1 (a tie)
                       [500, 500, 510, 510]])  # overlaps no anchor
    assert Matcher(0.5, 0.4, True)(gt, anchors).tolist() == [0, 0, BACKGROUND]


def test_empty_gt_gives_all_background():
    anchors = _random_boxes(50)
    out = Matcher()(torch.zeros(0, 4), anchors)
    assert out.shape == (50,) and out.dtype == torch.int64 and (out == BACKGROUND).all()


def test_crowd_boxes_become_ignore_regions():
    anchors = torch.tensor([[0.0, 0, 10, 10], [200, 200, 210, 210], [205, 205, 225, 225], [400, 400, 410, 410]])
    gt = torch.tensor([[0.0, 0, 10, 10]])
    crowd = torch.tensor([[190.0, 190, 260, 260]])
    out = Matcher()(gt, anchors, crowd)
    # inside the crowd: ignored; foreground anchors stay foreground; far anchors stay background
    assert out.tolist() == [0, IGNORE, IGNORE, BACKGROUND]
    assert Matcher()(gt, anchors).tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    assert Matcher()(gt, anchors, torch.zeros(0, 4)).tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    # intersection over anchor area, not IoU: a small anchor inside a huge crowd box counts fully
    torch.testing.assert_close(crowd_ioa(crowd, anchors), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    # crowd only (no real gt): the anchor on the crowd is ignored
    assert Matcher()(torch.zeros(0, 4), anchors, crowd).tolist() == [BACKGROUND, IGNORE, IGNORE, BACKGROUND]


def test_bad_thresholds():
    with pytest.raises(ValueError, match="bg_iou"):
        Matcher(0.4, 0.5)


def test_box_iou_is_torchvisions_bit_for_bit():
    # Bit for bit, so that IoU ties and the fg/bg thresholds fall exactly where torchvision's do.
    torch.manual_seed(1)
    anchors = torch.cat([_random_boxes(2000), torch.tensor([[5.0, 5, 5, 9], [0, 0, 0, 0]])])  # with empty anchors
    for g in (0, 1, 7, 40):
        gt = _random_boxes(g)
        assert torch.equal(our_box_iou(gt, anchors), box_iou(gt, anchors))
