"""Mask loss ``bce | dice | bce+dice`` (``Config.mask_loss``, ``mask_dice_weight``): dice values on
hand-made 28x28 masks, the sum with its weight, finite gradients, and bce unchanged."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskrcnn import Config
from maskrcnn.modeling.mask_head import DICE_SMOOTH, MaskPredictor, dice_loss, mask_loss

M = 28
BIG = 30.0  # sigmoid(30) == 1 and sigmoid(-30) ~ 1e-13 in fp32: a hard prediction


def _half(side: str) -> torch.Tensor:
    m = torch.zeros(M, M)
    if side == "left":
        m[:, : M // 2] = 1
    elif side == "right":
        m[:, M // 2:] = 1
    elif side == "top":
        m[: M // 2] = 1
    return m


def _logits(mask: torch.Tensor) -> torch.Tensor:
    """Hard logits predicting ``mask``."""
    return (mask * 2 - 1) * BIG


def test_dice_of_a_perfect_prediction_is_zero() -> None:
    t = _half("left")[None]
    assert float(dice_loss(_logits(t).sigmoid(), t)[0]) < 1e-6


def test_dice_of_a_disjoint_prediction_is_one_but_the_smooth_term() -> None:
    t, p = _half("left")[None], _half("right")[None]
    got = float(dice_loss(_logits(p).sigmoid(), t)[0])
    # 1 - smooth / (392 + 392 + smooth)
    assert abs(got - (1 - DICE_SMOOTH / (784 + DICE_SMOOTH))) < 1e-6 and got > 0.998


def test_dice_of_a_half_overlap_and_of_a_soft_prediction() -> None:
    t = _half("left")[None]
    # top half against left half: 196 common pixels of 392 + 392 -> 1 - (2 * 196 + 1) / (784 + 1)
    got = float(dice_loss(_logits(_half("top")[None]).sigmoid(), t)[0])
    assert DICE_SMOOTH == 1.0 and abs(got - (1 - 393 / 785)) < 1e-6
    # p = 0.5 everywhere against a full mask: 1 - (2 * 392 + 1) / (392 + 784 + 1)
    full = torch.ones(1, M, M)
    assert abs(float(dice_loss(torch.full((1, M, M), 0.5), full)[0]) - (1 - 785 / 1177)) < 1e-6
    # both empty: 0 (the smooth term), not 0/0
    assert float(dice_loss(torch.zeros(1, M, M), torch.zeros(1, M, M))[0]) == 0.0


def _two_rois() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [2, 3, M, M] (class 0 and the unlabelled class wrong on purpose), labels [1, 2], targets."""
    targets = torch.stack([_half("left"), _half("left")])
    logits = torch.full((2, 3, M, M), -BIG)
    logits[0, 1] = _logits(_half("top"))  # half overlap
    logits[1, 2] = _logits(_half("left"))  # perfect
    logits[0, 2] = _logits(_half("left"))  # perfect, but not the labelled class: must not count
    return logits, torch.tensor([1, 2]), targets


def test_mask_loss_kinds_and_weights() -> None:
    logits, labels, targets = _two_rois()
    half = 1 - 393 / 785
    bce = mask_loss(logits, labels, targets)
    assert torch.equal(bce, mask_loss(logits, labels, targets, kind="bce"))
    # dice: mean over RoIs of the labelled class's dice, times its weight
    assert abs(float(mask_loss(logits, labels, targets, kind="dice")) - half / 2) < 1e-6
    assert abs(float(mask_loss(logits, labels, targets, kind="dice", dice_weight=0.5)) - half / 4) < 1e-6
    both = mask_loss(logits, labels, targets, kind="bce+dice", dice_weight=0.5)
    assert abs(float(both) - (float(bce) + 0.5 * half / 2)) < 1e-5 and float(bce) > 1.0
    # class weights average the per-RoI dice: (1 * half + 3 * 0) / 4
    cw = torch.tensor([1.0, 1.0, 3.0])
    assert abs(float(mask_loss(logits, labels, targets, cw, kind="dice")) - half / 4) < 1e-6


def test_gradients_are_finite_for_every_kind() -> None:
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(4, M, M, generator=g) > 0.5).float()
    targets[3] = 0  # an empty target
    labels = torch.tensor([1, 2, 1, 2])
    for kind in ("bce", "dice", "bce+dice"):
        for scale in (1.0, 100.0):  # moderate and saturated logits
            logits = (torch.randn(4, 3, M, M, generator=g) * scale).requires_grad_()
            loss = mask_loss(logits, labels, targets, kind=kind, dice_weight=2.0)
            loss.backward()
            grad = logits.grad
            assert torch.isfinite(loss) and grad is not None and bool(torch.isfinite(grad).all()), (kind, scale)
            assert float(grad[:, 0].abs().max()) == 0.0  # background class never gets a gradient
            if scale == 1.0:
                assert float(grad[torch.arange(4), labels].abs().sum()) > 0


def test_no_positives_give_zero_for_dice() -> None:
    logits = torch.zeros(0, 3, M, M, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, M, M), kind="bce+dice")
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def _head_losses(loss: str, weight: float, state: dict | None = None) -> tuple[MaskPredictor, torch.Tensor]:
    torch.manual_seed(0)
    pred = MaskPredictor(8, 6, num_classes=3, loss=loss, dice_weight=weight).train()
    if state is not None:
        pred.load_state_dict(state)
    x = torch.randn(2, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    top = torch.zeros(1, 20, 20, dtype=torch.uint8)
    top[0, :10] = 1
    out = pred.losses(x, [box.expand(2, 4)], [torch.tensor([1, 2])], [torch.zeros(2, dtype=torch.int64)],
                      [{"masks": top, "boxes": box}])
    return pred, out["loss_mrcnn_mask"]


def test_head_loss_is_bce_plus_weighted_dice_and_bce_is_unchanged() -> None:
    pred, bce = _head_losses("bce", 1.0)
    _, dice = _head_losses("dice", 1.0, pred.state_dict())
    _, both = _head_losses("bce+dice", 0.25, pred.state_dict())
    torch.testing.assert_close(both, bce + 0.25 * dice, atol=1e-6, rtol=0)
    assert 0 < float(dice.detach()) < 1
    # the default is plain binary cross-entropy, bit for bit (what the head computed before mask_loss existed)
    x = torch.randn(2, 8, 7, 7, generator=torch.Generator().manual_seed(1))
    from maskrcnn.modeling.mask_head import mask_targets

    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    top = torch.zeros(1, 20, 20, dtype=torch.uint8)
    top[0, :10] = 1
    t = mask_targets(box.expand(2, 4), torch.zeros(2, dtype=torch.int64), top, box, 14)
    ref = F.binary_cross_entropy_with_logits(pred(x)[torch.arange(2), torch.tensor([1, 2])].float(), t)
    assert torch.equal(bce, ref)


def test_config_builds_the_head_with_its_mask_loss() -> None:
    from maskrcnn.modeling import build_model

    small = dict(num_classes=3, backbone="resnet18", backbone_width=8, fpn_channels=8, mask_head_channels=8, box_head_dim=16)
    head = build_model(Config(**small, mask_loss="bce+dice", mask_dice_weight=0.5)).roi_heads.mask_predictor
    assert (head.loss_kind, head.dice_weight) == ("bce+dice", 0.5)
    assert build_model(Config(**small)).roi_heads.mask_predictor.loss_kind == "bce"


def test_matterport_configs_keep_bce_and_take_dice_as_an_override() -> None:
    class Plain:
        NAME = "balloon"
        NUM_CLASSES = 2

    cfg = Config.from_matterport(Plain())
    assert (cfg.mask_loss, cfg.mask_dice_weight) == ("bce", 1.0)
    cfg = Config.from_matterport(Plain(), mask_loss="bce+dice", mask_dice_weight=0.5)
    assert (cfg.mask_loss, cfg.mask_dice_weight) == ("bce+dice", 0.5)
