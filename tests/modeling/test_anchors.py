"""AnchorGenerator: cell anchors, counts, strides and order against hand-computed values."""

from __future__ import annotations

import torch

from maskrcnn.modeling.anchors import AnchorGenerator

# size 32, ratios (h/w) 0.5, 1, 2: w = 32/sqrt(r), h = 32*sqrt(r), halves rounded (torchvision's values)
CELL_32 = [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
CELL_64 = [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]]


def test_cell_anchors_are_rounded_boxes_of_each_size_and_ratio() -> None:
    gen = AnchorGenerator([32, 64], [0.5, 1.0, 2.0])
    assert gen.num_anchors_per_location == 3
    assert torch.equal(gen.cell_anchors[0], torch.tensor(CELL_32, dtype=torch.float32))
    assert torch.equal(gen.cell_anchors[1], torch.tensor(CELL_64, dtype=torch.float32))


def test_counts_strides_and_order_within_a_level() -> None:
    gen = AnchorGenerator([32, 64], [0.5, 1.0, 2.0])
    # padded image 64 x 96; level 0 is 4 x 6 (stride 16), level 1 is 2 x 3 (stride 32)
    lv0, lv1 = gen((64, 96), [(4, 6), (2, 3)], torch.device("cpu"))
    assert lv0.shape == (4 * 6 * 3, 4) and lv1.shape == (2 * 3 * 3, 4)
    # order (y, x, anchor): index (y * W + x) * A + a, centred on the cell's top-left corner (x*s, y*s)
    y, x = 1, 2
    for a in range(3):
        expected = torch.tensor(CELL_32[a], dtype=torch.float32) + torch.tensor([x * 16, y * 16] * 2)
        assert torch.equal(lv0[(y * 6 + x) * 3 + a], expected)
    assert torch.equal(lv1[(1 * 3 + 2) * 3 + 1], torch.tensor([64 - 32, 32 - 32, 64 + 32, 32 + 32], dtype=torch.float32))
    centres = (lv0[:, :2] + lv0[:, 2:]) / 2
    assert torch.equal(centres[::3, 0].reshape(4, 6), torch.arange(6).float().mul(16).expand(4, 6))
    assert torch.equal(centres[::3, 1].reshape(4, 6), torch.arange(4).float().mul(16)[:, None].expand(4, 6))


def test_strides_differ_per_axis_when_the_image_is_not_square() -> None:
    gen = AnchorGenerator([32], [1.0])
    (anchors,) = gen((40, 80), [(5, 5)], torch.device("cpu"))  # strides 8 (y) and 16 (x)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.equal(centres[:, 0].unique(), torch.arange(5).float() * 16)
    assert torch.equal(centres[:, 1].unique(), torch.arange(5).float() * 8)


def test_sizes_and_ratios_of_the_anchors() -> None:
    gen = AnchorGenerator([128], [0.25, 1.0, 4.0])
    (anchors,) = gen((128, 128), [(1, 1)], torch.device("cpu"))
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    torch.testing.assert_close(h / w, torch.tensor([0.25, 1.0, 4.0]))
    torch.testing.assert_close((w * h).sqrt(), torch.full((3,), 128.0))


def test_equal_to_torchvision_anchor_generator() -> None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator

    sizes, ratios = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]
    grids = [(50, 68), (25, 34), (13, 17), (7, 9), (4, 5)]
    ours = AnchorGenerator(sizes, ratios)((800, 1088), grids, torch.device("cpu"))
    tv = TVAnchorGenerator(tuple((s,) for s in sizes), (tuple(ratios),) * 5)
    tv.set_cell_anchors(torch.float32, torch.device("cpu"))
    strides = [[torch.tensor(800 // h), torch.tensor(1088 // w)] for h, w in grids]
    ref = tv.grid_anchors([list(g) for g in grids], strides)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_repeated_shapes_come_from_the_cache_and_old_entries_are_evicted() -> None:
    gen = AnchorGenerator([32], [1.0], max_cache=2)
    cpu = torch.device("cpu")
    first = gen((64, 64), [(4, 4)], cpu)
    assert gen((64, 64), [(4, 4)], cpu) is first
    gen((64, 96), [(4, 6)], cpu)
    gen((96, 64), [(6, 4)], cpu)  # a third shape evicts the oldest
    again = gen((64, 64), [(4, 4)], cpu)
    assert again is not first and torch.equal(again[0], first[0])
