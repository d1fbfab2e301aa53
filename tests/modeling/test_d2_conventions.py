"""Two small inference conventions shared with Detectron2: the RPN drops only empty proposals
(``Boxes.nonempty()``: width > 0 and height > 0 after clipping), and masks are binarised as
``probability >= 0.5`` (its mask pasting)."""

import torch

from panfpn.modeling.merge import MergeThresholds
from panfpn.modeling.panoptic_fpn.postprocess import panoptic_results
from panfpn.modeling.panoptic_fpn.rpn import RPN, ProposalLimits


def test_rpn_drops_only_empty_proposals():
    rpn = RPN(in_channels=8, limits=ProposalLimits(10, 10, 10, 10)).eval()
    boxes = torch.tensor([
        [10.0, 10.0, 10.0005, 20.0],  # width ~5e-4: kept (torchvision's 1e-3 rule would drop it)
        [30.0, 30.0, 30.0, 40.0],     # width 0: dropped
        [50.0, 50.0, 60.0, 50.0],     # height 0: dropped
        [120.0, 10.0, 130.0, 20.0],   # right of the image: width 0 after clipping, dropped
        [60.0, 60.0, 80.0, 80.0],     # kept
        [5.0, 70.0, 5.0004, 70.0004],  # both sides ~4e-4: kept
        [float("nan"), 0.0, 5.0, 5.0],  # not finite: dropped
    ])
    logits = torch.tensor([3.0, 6.0, 5.0, 4.0, 1.0, 2.0, 7.0])
    kept, scores = rpn.filter_proposals(boxes[None], logits[None], [(100, 100)], [len(boxes)])
    assert len(kept) == 1
    assert torch.equal(kept[0], boxes[[0, 5, 4]])  # by descending score
    torch.testing.assert_close(scores[0], logits[[0, 5, 4]].sigmoid())
    assert (kept[0][:, 2] - kept[0][:, 0] < 1e-3).sum() == 2


def test_probability_of_exactly_half_is_foreground():
    """A mask logit of 0 (sigmoid exactly 0.5) counts as the instance, in the instance masks and
    in the panoptic merge."""
    probs = torch.zeros(1, 4, 4).sigmoid()  # exactly 0.5
    assert (probs == 0.5).all()
    probs[0, 0, 0] = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))  # just below: background
    # A 4x4 image and a box on the whole image: pixel centres fall on mask cell centres, so the
    # pasted probabilities are the mask's own values.
    det = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([2]), "mask_probs": probs}
    sem_logits = torch.zeros(1, 3, 32, 32)
    out = panoptic_results([det], sem_logits, [(4, 4)], [(4, 4)], thing_sem_labels=[2],
                           merge=MergeThresholds(0.5, 0.5, 1))[0]
    expected = torch.ones(1, 4, 4, dtype=torch.bool)
    expected[0, 0, 0] = False
    assert torch.equal(out["instances"]["masks"], expected)
    id_map, segments = out["panoptic"]
    assert segments[0]["isthing"] and segments[0]["area"] == 15
    assert torch.equal(id_map == segments[0]["id"], expected[0])
