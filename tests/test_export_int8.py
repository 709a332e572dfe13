"""``maskrcnn export [--format openvino] --int8 --calibration DIR --validation DATA``: ONNX
Runtime's static int8 quantisation of the ONNX export (NNCF's of the OpenVINO one), calibrated on a
folder of images, and the accuracy it costs measured on a dataset. The dataset is made of the exact
model's own detections, so the exact model scores mask AP 1.0 on it and the cost is what int8
changes. (On these random-weight models int8 moves detections, NNCF's far more than ONNX Runtime's;
what it costs on trained models is measured by ``benchmarks/deploy.py --shapes-weights/--nuclei-weights``.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from _bad_input import run_cli  # noqa: E402
from _evaluate_data import detecting_model, save_model, write_gt, write_images  # noqa: E402

from maskrcnn.inference.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    model = detecting_model({1: 4.0})
    ck = save_model(model, root / "tiny.safetensors")
    images = write_images(root / "data", 3)
    eager = Predictor(model, device="cpu")
    dets = eager.detect([str(p) for p in images])
    gt = write_gt(root / "data" / "gt.json", images, dets, [(1, "cell")], {1: 1})
    result = run_cli("export", "--weights", ck, "--out", root / "int8.onnx", "--int8", "--calibration", root / "data",
                     "--validation", gt)
    return root, eager, images, result


def test_int8_export_is_quantised_and_records_its_cost(int8):
    import onnx

    root, _, _, result = int8
    assert result.code == 0, result.err
    graph = onnx.load(str(root / "int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "RoiAlign", "NonMaxSuppression"} <= ops
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer) >= 10  # the conv/linear weights
    meta = json.loads((root / "int8.json").read_text())
    q = meta["int8"]
    assert q["calibration_images"] == 3 and q["ops"] == ["Conv", "MatMul", "Gemm"]
    v = q["validation"]
    assert v["exact_mask_AP"] == pytest.approx(1.0) and 0.0 <= v["int8_mask_AP"] <= 1.0
    for field in ("mask_AP", "mask_AP50", "box_AP"):
        assert v[f"{field}_cost"] == pytest.approx(100 * (v[f"exact_{field}"] - v[f"int8_{field}"]))
    assert f"cost {v['mask_AP_cost']:.2f} points" in result.out


def test_int8_detections_follow_the_exact_model(int8):
    import torch
    from torchvision.ops import box_iou

    import maskrcnn

    root, eager, images, _ = int8
    q = maskrcnn.load(root / "int8.onnx", device="cpu")
    for a, b in zip(eager.detect([str(p) for p in images]), q.detect([str(p) for p in images])):
        assert len(a) > 0 and len(b) > 0 and b.masks.shape[1:] == a.masks.shape[1:]
        best = box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).max(1).values
        # int8 of a tiny random-weight model moves some boxes (that is what --validation measures);
        # the most confident detection stays, and most detections have a counterpart
        assert float(best[0]) > 0.9 and float((best > 0.5).float().mean()) >= 0.5, best
        assert abs(float(a.scores[0] - b.scores[0])) < 0.05


def test_evaluate_accepts_an_export(int8):
    """``maskrcnn evaluate --weights model.onnx``: the fp32 export scores what the exact model
    scores on its own detections (mask AP 1.0); the int8 one what ``--validation`` recorded."""
    root, _, _, _ = int8
    assert run_cli("export", "--weights", root / "tiny.safetensors", "--out", root / "fp32.onnx").code == 0
    recorded = json.loads((root / "int8.json").read_text())["int8"]["validation"]
    for name, expected in (("fp32", 1.0), ("int8", recorded["int8_mask_AP"])):
        r = run_cli("evaluate", "--weights", root / f"{name}.onnx", "--data", root / "data" / "gt.json",
                    "--out", root / f"eval_{name}")
        assert r.code == 0, r.err
        report = json.loads((root / f"eval_{name}" / "report.json").read_text())
        assert report["coco"]["segm"]["AP"] == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def ov_int8(int8):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    root = int8[0]
    result = run_cli("export", "--weights", root / "tiny.safetensors", "--format", "openvino", "--out", root / "ov",
                     "--int8", "--calibration", root / "data", "--validation", root / "data" / "gt.json")
    return root / "ov" / "model.xml", result


def test_openvino_int8_is_nncf_on_the_dense_layers_only(ov_int8):
    """NNCF's FakeQuantize ops feed the convolutions and matmuls (backbone, FPN, heads) and nothing
    else: the input transform, box decoding, NMS and RoIAlign stay fp32."""
    import openvino as ov

    xml, result = ov_int8
    assert result.code == 0, result.err
    assert "Statistics collection" not in result.out  # NNCF's progress bars go to stderr
    model = ov.Core().read_model(str(xml))
    fed = {t.get_node().get_type_name() for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
           for t in op.output(0).get_target_inputs()}
    assert {"Convolution", "MatMul"} <= fed
    assert not fed & {"ROIAlign", "NonMaxSuppression", "Add", "Multiply", "Subtract", "Divide", "Exp", "Gather",
                      "TopK", "Concat", "Interpolate", "MaxPool", "Sigmoid", "SoftMax"}, fed
    q = json.loads(xml.with_suffix(".json").read_text())["int8"]
    assert q["method"].startswith("nncf ") and q["calibration_images"] == 3
    assert q["ops"] == ["Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"]


def test_openvino_int8_validation_records_each_models_ap(ov_int8):
    """``--validation``'s fields are the AP of evaluating the exact model and the int8 IR on the
    dataset, and the costs their differences in points."""
    import maskrcnn
    from maskrcnn.evaluation import evaluate_model
    from maskrcnn.data.formats import load_dataset

    xml, result = ov_int8
    assert result.code == 0, result.err
    v = json.loads(xml.with_suffix(".json").read_text())["int8"]["validation"]
    data = load_dataset(str(xml.parents[1] / "data" / "gt.json"))
    assert v["images"] == 3
    for key, model in (("exact", maskrcnn.load(xml.parents[1] / "tiny.safetensors", device="cpu", fast=False)),
                       ("int8", maskrcnn.load(xml))):
        coco = evaluate_model(model, data)["coco"]
        assert v[f"{key}_mask_AP"] == pytest.approx(coco["segm"]["AP"], abs=1e-9)
        assert v[f"{key}_mask_AP50"] == pytest.approx(coco["segm"]["AP50"], abs=1e-9)
        assert v[f"{key}_box_AP"] == pytest.approx(coco["bbox"]["AP"], abs=1e-9)
    assert v["exact_mask_AP"] == pytest.approx(1.0)
    for field in ("mask_AP", "mask_AP50", "box_AP"):
        assert v[f"{field}_cost"] == pytest.approx(100 * (v[f"exact_{field}"] - v[f"int8_{field}"]))
    assert f"cost {v['mask_AP_cost']:.2f} points" in result.out and "mask AP50" in result.out
