"""Box head: output shapes, losses on hand-made targets, inference (score filter, clipping,
per-class NMS, caps)."""

from __future__ import annotations

import math

import torch

from maskrcnn.modeling.box_head import BoxPredictor, ConvFCHead, TwoMLPHead


def test_feature_heads_and_predictor_shapes() -> None:
    x = torch.randn(5, 8, 7, 7)
    assert TwoMLPHead(8 * 7 * 7, 16)(x).shape == (5, 16)
    assert ConvFCHead(8, 7, 16).eval()(x).shape == (5, 16)
    logits, deltas = BoxPredictor(16, 3)(torch.randn(5, 16))
    assert logits.shape == (5, 3) and deltas.shape == (5, 12)
    assert [k for k, _ in ConvFCHead(8, 7, 16).named_children()] == ["0", "1", "2", "3", "4", "5", "6"]


ROI = [0.0, 0.0, 10.0, 10.0]


def _loss_case(perfect: bool):  # noqa: ANN202
    """Three RoIs on one box: background, class 2 (GT = the RoI), class 1 (GT moved 1 px right)."""
    rois = [torch.tensor([ROI] * 3)]
    labels = [torch.tensor([0, 2, 1])]
    gt = [torch.tensor([ROI, ROI, [1.0, 0.0, 11.0, 10.0]])]
    deltas = torch.full((3, 3, 4), 5.0)  # garbage for every class that is not the RoI's label
    deltas[1, 2] = 0.0  # class 2: the exact target (0, 0, 0, 0)
    deltas[2, 1] = torch.tensor([1.0 if perfect else 0.0, 0, 0, 0])  # class 1: target dx = 10 * 1 / 10 = 1
    return rois, labels, gt, deltas.reshape(3, 12)


def test_box_loss_uses_the_labelled_class_of_positives_only() -> None:
    pred = BoxPredictor(4, 3)
    rois, labels, gt, deltas = _loss_case(perfect=True)
    assert float(pred.losses(torch.zeros(3, 3), deltas, rois, labels, gt)["loss_mrcnn_bbox"]) == 0.0
    rois, labels, gt, deltas = _loss_case(perfect=False)
    # smooth-L1 (beta 1/9) of dx 1 vs 0, divided by the 3 sampled RoIs
    torch.testing.assert_close(pred.losses(torch.zeros(3, 3), deltas, rois, labels, gt)["loss_mrcnn_bbox"],
                               torch.tensor((1 - 0.5 / 9) / 3))


def test_class_loss_known_values_with_and_without_class_weights() -> None:
    rois, labels, gt, deltas = _loss_case(perfect=True)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    l0, l1 = math.log(1 + 2 * math.exp(-2)), math.log(3)  # -log softmax of the label
    got = BoxPredictor(4, 3).losses(logits, deltas, rois, labels, gt)
    assert set(got) == {"loss_mrcnn_class", "loss_mrcnn_bbox"}
    torch.testing.assert_close(got["loss_mrcnn_class"], torch.tensor((l0 + 2 * l1) / 3))
    got = BoxPredictor(4, 3, class_weights=[1.0, 3.0, 0.5]).losses(logits, deltas, rois, labels, gt)
    torch.testing.assert_close(got["loss_mrcnn_class"], torch.tensor((l0 + 0.5 * l1 + 3 * l1) / 4.5))


def test_loss_weights_multiply_each_term() -> None:
    rois, labels, gt, deltas = _loss_case(perfect=False)
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    plain = BoxPredictor(4, 3).losses(logits, deltas, rois, labels, gt)
    weighted = BoxPredictor(4, 3, loss_weights={"mrcnn_class": 2.0, "mrcnn_bbox": 0.5, "rpn_class": 7.0}).losses(
        logits, deltas, rois, labels, gt)
    torch.testing.assert_close(weighted["loss_mrcnn_class"], 2.0 * plain["loss_mrcnn_class"])
    torch.testing.assert_close(weighted["loss_mrcnn_bbox"], 0.5 * plain["loss_mrcnn_bbox"])


# inference: image 0 (100 x 100) has four proposals, image 1 (40 x 30) one; zero deltas
PROPOSALS = [torch.tensor([[10.0, 10.0, 50.0, 50.0],     # p0
                           [12.0, 10.0, 52.0, 50.0],     # p1: IoU 0.90 with p0
                           [60.0, 60.0, 120.0, 90.0],    # p2: clipped to x2 = 100
                           [100.0, 10.0, 130.0, 50.0]]),  # p3: zero width once clipped
             torch.tensor([[0.0, 0.0, 20.0, 20.0]])]
PROBS = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.5, 0.04, 0.46], [0.02, 0.95, 0.03], [0.25, 0.03, 0.72]])


def _infer(score_threshold: float | None = None, **kw: float) -> list[dict[str, torch.Tensor]]:
    pred = BoxPredictor(4, 3, score_thresh=0.05, nms_thresh=0.5, **kw)  # type: ignore[arg-type]
    return pred.inference(PROBS.log(), torch.zeros(5, 12), PROPOSALS, [(100, 100), (30, 40)], score_threshold)


def test_inference_filters_by_score_clips_and_runs_nms_per_class() -> None:
    first, second = _infer()
    # class 1: p0 (0.8) suppresses p1 (0.6); p2's 0.04 is under 0.05; p3 is degenerate.
    # class 2: p2 (0.46), p1 (0.3) suppresses p0 (0.1); p3's 0.03 is under 0.05.
    assert first["labels"].tolist() == [1, 2, 2]
    torch.testing.assert_close(first["scores"], torch.tensor([0.8, 0.46, 0.3]))
    torch.testing.assert_close(first["boxes"], torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 100.0, 90.0],
                                                             [12.0, 10.0, 52.0, 50.0]]))
    assert second["labels"].tolist() == [2] and torch.equal(second["boxes"], PROPOSALS[1])


def test_inference_caps_and_score_threshold() -> None:
    assert _infer(detections_per_img=2)[0]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(_infer(score_threshold=0.35)[0]["scores"], torch.tensor([0.8, 0.46]))
    assert len(_infer(score_threshold=0.75)[1]["scores"]) == 0


def test_inference_applies_the_class_deltas() -> None:
    pred = BoxPredictor(4, 3, score_thresh=0.05)
    deltas = torch.zeros(1, 12)
    deltas[0, 8] = 10.0  # class 2: dx = 10 / 10 = one box width to the right
    (out,) = pred.inference(torch.tensor([[0.1, 0.2, 0.7]]).log(), deltas, [torch.tensor([[0.0, 0.0, 20.0, 20.0]])], [(100, 100)])
    assert out["labels"].tolist() == [2, 1]
    torch.testing.assert_close(out["boxes"], torch.tensor([[20.0, 0.0, 40.0, 20.0], [0.0, 0.0, 20.0, 20.0]]))
