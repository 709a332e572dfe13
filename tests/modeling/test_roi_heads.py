"""RoIHeads: proposal sampling (GT added, IoU boundary, ignore regions, empty GT, positive fraction)
and the orchestration of the box and mask heads in training and inference."""

from __future__ import annotations

import torch

from maskrcnn.modeling.box_head import BoxPredictor, TwoMLPHead
from maskrcnn.modeling.mask_head import MaskHead, MaskPredictor
from maskrcnn.modeling.roi_heads import RoIHeads


def _heads(batch: int = 512, fraction: float = 0.25, **box_kw: float) -> RoIHeads:
    torch.manual_seed(0)
    mask_head = MaskHead(4, 8, convs=1, norm=False)
    return RoIHeads(TwoMLPHead(4 * 7 * 7, 16), BoxPredictor(16, 3, **box_kw), mask_head, MaskPredictor(8, 8, 3),  # type: ignore[arg-type]
                    pool_size=7, mask_pool_size=7, sampling_ratio=2, fg_iou=0.5, batch_size_per_image=batch,
                    positive_fraction=fraction)


GT = torch.tensor([[0.0, 0.0, 10.0, 12.0]])


def test_sample_adds_the_gt_and_labels_by_iou() -> None:
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 24.0],
                               [0.0, 0.0, 10.0, 24.5]])]  # IoU 0.83, 0, exactly 0.5, 0.49
    s = _heads().sample(proposals, [{"boxes": GT, "labels": torch.tensor([2])}])
    assert torch.equal(s.rois[0], torch.cat([proposals[0], GT]))
    assert s.labels[0].tolist() == [2, 0, 2, 0, 2]
    assert s.matched[0].tolist() == [0] * 5 and torch.equal(s.gt_boxes[0], GT.expand(5, 4))


def test_sample_skips_background_in_ignore_regions_and_handles_no_gt() -> None:
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])]
    ignore = torch.zeros(64, 64, dtype=torch.bool)
    ignore[48:64, 48:64] = True
    s = _heads().sample(proposals, [{"boxes": GT, "labels": torch.tensor([1]), "ignore": ignore}])
    assert torch.equal(s.rois[0], torch.cat([proposals[0][:1], GT])) and s.labels[0].tolist() == [1, 1]
    s = _heads().sample(proposals, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert torch.equal(s.rois[0], proposals[0]) and s.labels[0].tolist() == [0, 0]


def test_sample_caps_positives_at_the_fraction_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    proposals = [torch.cat([GT.expand(10, 4) + torch.rand(10, 4, generator=g) * 0.5,
                            torch.tensor([[40.0, 40.0, 50.0, 50.0]]) + torch.rand(10, 4, generator=g)])]
    target = [{"boxes": GT, "labels": torch.tensor([1])}]
    torch.manual_seed(3)
    a = _heads(batch=8, fraction=0.25).sample(proposals, target)
    torch.manual_seed(3)
    b = _heads(batch=8, fraction=0.25).sample(proposals, target)
    assert sorted(a.labels[0].tolist()) == [0] * 6 + [1] * 2  # int(8 * 0.25) positives, negatives fill the rest
    assert torch.equal(a.rois[0], b.rois[0])


def _features(batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 4, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]


def test_training_returns_the_three_weighted_head_losses() -> None:
    heads = _heads().train()
    proposals = [torch.tensor([[1.0, 1.0, 30.0, 30.0], [30.0, 30.0, 60.0, 60.0]])]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 0:30, 0:30] = 1
    target = [{"boxes": torch.tensor([[0.0, 0.0, 30.0, 30.0]]), "labels": torch.tensor([2]), "masks": masks}]
    dets, losses = heads(_features(), proposals, [(64, 64)], target)
    assert dets == [] and set(losses) == {"loss_mrcnn_class", "loss_mrcnn_bbox", "loss_mrcnn_mask"}
    assert all(v.requires_grad and float(v.detach()) > 0 for v in losses.values())


def test_inference_gives_detections_with_one_mask_each() -> None:
    heads = _heads(score_thresh=0.0).eval()
    proposals = [torch.tensor([[1.0, 1.0, 30.0, 30.0], [30.0, 30.0, 60.0, 60.0]]), torch.tensor([[5.0, 5.0, 20.0, 40.0]])]
    dets, losses = heads(_features(2), proposals, [(64, 64), (50, 40)])
    assert losses == {} and len(dets) == 2
    for d, (h, w) in zip(dets, [(64, 64), (50, 40)]):
        assert set(d) == {"boxes", "scores", "labels", "mask_probs"} and len(d["boxes"]) > 0
        assert d["mask_probs"].shape == (len(d["boxes"]), 14, 14)
        assert bool((d["mask_probs"] >= 0).all() & (d["mask_probs"] <= 1).all())
        assert bool((d["boxes"][:, 2] <= w).all() & (d["boxes"][:, 3] <= h).all())
    cut = float(dets[0]["scores"].median())
    kept = heads.detect(_features(2), proposals, [(64, 64), (50, 40)], score_threshold=cut)[0]
    assert bool((kept["scores"] >= cut).all()) and len(kept["mask_probs"]) == len(kept["scores"]) < len(dets[0]["scores"])
    torch.testing.assert_close(kept["mask_probs"], dets[0]["mask_probs"][: len(kept["scores"])])


def test_an_image_without_proposals_gets_no_detections() -> None:
    """An untrained RPN can leave an image without proposals: empty results, the other image unchanged."""
    heads = _heads(score_thresh=0.0).eval()
    some = torch.tensor([[1.0, 1.0, 30.0, 30.0], [30.0, 30.0, 60.0, 60.0]])
    dets, _ = heads(_features(2), [torch.zeros(0, 4), some], [(64, 64), (64, 64)])
    assert len(dets[0]["boxes"]) == len(dets[0]["scores"]) == len(dets[0]["labels"]) == 0
    assert dets[0]["mask_probs"].shape == (0, 14, 14) and len(dets[1]["boxes"]) > 0
    alone, _ = heads(_features(1), [torch.zeros(0, 4)], [(64, 64)])
    assert alone[0]["boxes"].shape == (0, 4) and alone[0]["mask_probs"].shape == (0, 14, 14)
