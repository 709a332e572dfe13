"""The multi-level RoIAlign traced to ONNX (what ``maskrcnn export`` does) pools any number of RoIs
per FPN level, whatever counts the trace saw: a level that held one RoI in the trace and none, or
three, at run time (``result[idx] = out`` traced to a reshape fixed at the trace's count and failed
on the shapes demo's model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from maskrcnn.modeling.poolers import MultiLevelRoIAlign, roi_levels  # noqa: E402

# boxes of side 40 (P2), 150 (P3), 300 (P4) and 600 (P5) px: one per level at trace time
TRACE = torch.tensor([[0, 0, 0, 40, 40], [0, 0, 0, 150, 150], [0, 0, 0, 300, 300], [0, 0, 0, 600, 600]],
                     dtype=torch.float32)


class Pool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pooler = MultiLevelRoIAlign(7, 2)

    def forward(self, f2, f3, f4, f5, rois):
        return self.pooler.pool([f2, f3, f4, f5], rois)


@pytest.mark.parametrize("levels", [[0, 0, 3], [1, 1, 1, 2], [], [3]], ids=["P2-P5", "P3-P4", "none", "P5"])
def test_traced_pooler_takes_any_count_per_level(levels):
    gen = torch.Generator().manual_seed(0)
    feats = [torch.rand((1, 4, 160 // s, 160 // s), generator=gen) for s in (1, 2, 4, 8)]
    buf = io.BytesIO()
    torch.onnx.export(Pool(), (*feats, TRACE), buf, dynamo=False, opset_version=17,
                      input_names=["f2", "f3", "f4", "f5", "rois"], dynamic_axes={"rois": {0: "n"}})
    side = {0: 40.0, 1: 150.0, 2: 300.0, 3: 600.0}
    rois = torch.tensor([[0, 3.0 * k, 2.0, 3.0 * k + side[lv], 2.0 + side[lv]] for k, lv in enumerate(levels)],
                        dtype=torch.float32).reshape(-1, 5)
    assert roi_levels(rois[:, 1:]).tolist() == levels
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {**{f"f{k + 2}": f.numpy() for k, f in enumerate(feats)}, "rois": rois.numpy()})[0]
    want = Pool()(*feats, rois).numpy()
    assert got.shape == (len(levels), 4, 7, 7)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert len(levels) == 0 or np.abs(want).sum() > 0
