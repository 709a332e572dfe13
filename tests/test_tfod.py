"""TF Object Detection API files without TensorFlow: TFRecord framing and CRC-32C, ``tf.train.Example``
decoding, ``label_map.pbtxt``, the ``tfrecord`` dataset format (load_dataset, convert to COCO
with pixel-exact masks, check-data, corrupt records skipped), and ``maskrcnn config
--from-pipeline``.

The records are written by ``tests/_tfrecord.py``, which encodes the protobuf wire format and
the framing by hand (its own bitwise CRC-32C), so the reader is checked against the format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import run_cli  # noqa: E402
from _pipelines import INCEPTION_RESNET_V2_TF1, RESNET101_COSINE  # noqa: E402
from _tfrecord import LABEL_MAP, example, frame, make_dataset, od_example, shapes, write_tfrecord  # noqa: E402

from maskrcnn.compat.tfod import records  # noqa: E402
from maskrcnn.compat.tfod.example import decode_example, encode_example  # noqa: E402
from maskrcnn.compat.tfod.labelmap import parse_label_map  # noqa: E402
from maskrcnn.compat.tfod.pipeline import config_from_pipeline  # noqa: E402
from maskrcnn.compat.tfod.textformat import Identifier, parse  # noqa: E402
from maskrcnn.config import Config, ConfigError  # noqa: E402
from maskrcnn.data import rle  # noqa: E402
from maskrcnn.data.formats import CocoDataset, detect_format, load_dataset  # noqa: E402

# --------------------------------------------------------------------------- framing, CRC, Example


def test_crc32c_known_values_and_masking():
    assert records.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert records.crc32c(b"") == 0
    assert records._crc32c_python(b"123456789") == 0xE3069283  # the fallback without google-crc32c
    data = bytes(range(256)) * 3
    assert records._crc32c_python(data) == records.crc32c(data)
    crc = records.crc32c(b"abc")
    assert records.masked_crc(b"abc") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert records.frame_record(b"payload") == frame(b"payload")  # the test helper's bitwise CRC agrees


def test_iter_records_offsets_and_read_back(tmp_path):
    payloads = [b"", b"a", b"x" * 1000]
    path = write_tfrecord(tmp_path / "r.tfrecord", payloads)
    entries = list(records.iter_records(path))
    assert [e.data for e in entries] == payloads
    assert [e.offset for e in entries] == [0, 16, 33]  # 12 header + data + 4 footer each
    assert records.read_record(path, 33, 2).data == b"x" * 1000
    assert records.count_records(path) == 3


def test_checksums_located_exactly(tmp_path):
    parts = [frame(p) for p in (b"one", b"two", b"three")]
    # corrupt the first data byte of record 1: its data checksum fails, record 2 is still read
    raw = bytearray(b"".join(parts))
    raw[len(parts[0]) + 12] ^= 0x01
    (tmp_path / "a.record").write_bytes(bytes(raw))
    got = list(records.iter_records(tmp_path / "a.record"))
    assert [(e.index, e.data, e.fatal) for e in got] == [(0, b"one", False), (1, None, False), (2, b"three", False)]
    assert "data checksum" in got[1].problem
    # corrupt record 1's length: nothing after it can be framed
    raw = bytearray(b"".join(parts))
    raw[len(parts[0])] ^= 0x01
    (tmp_path / "b.record").write_bytes(bytes(raw))
    got = list(records.iter_records(tmp_path / "b.record"))
    assert [(e.index, e.data, e.fatal) for e in got] == [(0, b"one", False), (1, None, True)]
    assert "length checksum" in got[1].problem
    # truncated in the middle of record 2
    (tmp_path / "c.record").write_bytes(b"".join(parts)[:-3])
    got = list(records.iter_records(tmp_path / "c.record"))
    assert [(e.index, e.data is None, e.fatal) for e in got] == [(0, False, False), (1, False, False), (2, True, True)]
    assert "truncated" in got[2].problem


def test_example_decoding_of_hand_encoded_bytes():
    data = example({"image/encoded": b"\x89PNG", "image/height": 7, "neg": [-3, 2 ** 40],
                    "f": [0.5, -1.25], "txt": ["a", "bc"], "none": []})
    ex = decode_example(data)
    assert ex == {"image/encoded": [b"\x89PNG"], "image/height": [7], "neg": [-3, 2 ** 40], "f": [0.5, -1.25],
                  "txt": [b"a", b"bc"], "none": []}
    assert decode_example(encode_example({"k": [1, 2], "s": "x"})) == {"k": [1, 2], "s": [b"x"]}


# --------------------------------------------------------------------------- text format, label map


def test_text_format_values_and_unused_leaves():
    root = parse("""
        # comment
        a: 1  b: -2.5e-1 c: 'it\\'s' "joined" d: TRUE_ENUM e: 0x10 f: 1.5f
        m { x: [1, 2, 3] y < z: "q" > empty {} }
        m: { x: 4 }
    """)
    assert root.get("a") == 1 and root.get("b") == -0.25 and root.get("c") == "it'sjoined"
    assert isinstance(root.get("d"), Identifier) and root.get("e") == 16 and root.get("f") == 1.5
    first, second = root.messages("m")
    assert first.get_all("x") == [1, 2, 3] and second.get("x") == 4
    assert first.message("y").get("z") == "q"
    assert sorted(p for p, _, _ in root.unused_leaves()) == ["m.empty"]  # first.message("empty") not read


def test_label_map_with_gaps_keeps_ids_and_names():
    lm = parse_label_map(LABEL_MAP, "label_map.pbtxt")
    assert lm.ids == [1, 3, 7]
    assert [i.class_name for i in lm.items] == ["cat", "Dog", "bird"]
    assert lm.id_of("dog") == 3 and lm.id_of("Dog") == 3 and lm.id_of("bird") == 7 and lm.id_of("cow") is None


# --------------------------------------------------------------------------- the dataset format


@pytest.fixture()
def tf_data(tmp_path):
    return make_dataset(tmp_path / "data")


def test_load_dataset_masks_images_and_classes_exact(tf_data):
    path, truth = tf_data
    assert detect_format(path) == "tfrecord"
    assert detect_format(path.parent) == "tfrecord"
    renamed = path.with_name("train.bin")
    renamed.write_bytes(path.read_bytes())
    assert detect_format(renamed) == "tfrecord"  # by the framing: the length checksum of the first header
    renamed.unlink()
    ds = load_dataset(path)
    assert ds.problems == []
    assert ds.class_names == ["BG", "cat", "Dog", "bird"]
    assert [c["id"] for c in ds.class_info] == [0, 1, 3, 7]  # the label map's ids, gaps kept
    internal = {1: 1, 3: 2, 7: 3}
    assert len(ds.image_info) == 3
    for i, t in enumerate(truth):
        masks, ids = ds.load_mask(i)
        assert np.array_equal(masks.transpose(2, 0, 1), t["masks"])  # PNG, raw float and raw byte masks
        assert ids.tolist() == [internal[label] for label in t["labels"]]
        assert np.array_equal(ds.load_image(i), t["image"])
        assert ds.image_reference(i) == f"{path}#{i} (img{i}.png)"


def test_shards_glob_and_folder(tmp_path):
    folder = tmp_path / "shards"
    _, truth0 = make_dataset(folder, name="train.record-00000-of-00003", seed=1)
    _, truth1 = make_dataset(folder, name="train.record-00001-of-00003", seed=2)
    ds = load_dataset(folder / "train.record-00000-of-00003")  # the siblings are read, the missing one reported
    assert len(ds.image_info) == 6
    assert [p["kind"] for p in ds.problems] == ["missing_shard"] and "00002" in ds.problems[0]["message"]
    masks, _ = ds.load_mask(3)
    assert np.array_equal(masks.transpose(2, 0, 1), truth1[0]["masks"])
    assert len(load_dataset(str(folder / "train.record-?????-of-00003")).image_info) == 6
    assert len(load_dataset(folder, format="tfrecord").image_info) == 6


def test_label_map_option_and_text_only_classes(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    masks = shapes(rng, 12, 16, 2)
    path = write_tfrecord(tmp_path / "x.record", [od_example(image, masks, texts=["bird", "cat"])])
    lm = tmp_path / "classes.pbtxt"
    lm.write_text(LABEL_MAP)
    ds = load_dataset(path, label_map=str(lm))
    assert ds.load_mask(0)[1].tolist() == [3, 1]


def test_convert_to_coco_same_masks_and_images(tf_data, tmp_path):
    path, truth = tf_data
    out = tmp_path / "out" / "coco.json"
    result = run_cli("convert", path, "--out", out)
    assert result.code == 0, result.err
    assert "3 images, 5 instances, 3 classes (cat, Dog, bird); 3 images written to" in result.out
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "Dog", "bird"]
    assert [im["file_name"] for im in coco["images"]] == [f"coco_images/img{i}.png" for i in range(3)]
    internal = {1: 1, 3: 2, 7: 3}
    for im, t in zip(coco["images"], truth):
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        got = np.stack([rle.decode(a["segmentation"]) for a in anns])
        assert np.array_equal(got, t["masks"])
        assert [a["category_id"] for a in anns] == [internal[label] for label in t["labels"]]
        assert (im["height"], im["width"]) == t["masks"].shape[1:]
    # the written COCO dataset reads back with the same pixels
    back = CocoDataset()
    back.load_coco(out)
    back.prepare()
    assert back.problems == []
    for i, t in enumerate(truth):
        assert np.array_equal(back.load_image(i), t["image"])
        assert np.array_equal(back.load_mask(i)[0].transpose(2, 0, 1), t["masks"])


def test_check_data_on_tfrecords(tf_data):
    path, _ = tf_data
    result = run_cli("check-data", path, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["summary"]["images"] == 3
    assert report["summary"]["instances"] == 5


def test_corrupt_and_truncated_records_are_reported_and_skipped(tmp_path):
    path, truth = make_dataset(tmp_path / "d")
    raw = bytearray(path.read_bytes())
    offsets = [e.offset for e in records.iter_records(path)]
    raw[offsets[1] + 40] ^= 0xFF  # inside record 1's data
    path.write_bytes(bytes(raw[:-10]))  # and record 2 truncated
    ds = load_dataset(path)
    assert len(ds.image_info) == 1
    assert np.array_equal(ds.load_mask(0)[0].transpose(2, 0, 1), truth[0]["masks"])
    msgs = [p["message"] for p in ds.problems]
    assert [p["kind"] for p in ds.problems] == ["corrupt_record", "corrupt_record"]
    assert msgs[0].startswith(f"{path}: record 1: data checksum mismatch") and "skipped" in msgs[0]
    assert msgs[1].startswith(f"{path}: record 2: truncated record") and "rest of the file" in msgs[1]
    assert all("\n" not in m for m in msgs)
    result = run_cli("check-data", path)
    assert result.code == 1 and "record 1: data checksum mismatch" in result.out


# --------------------------------------------------------------------------- pipeline.config


def test_pipeline_inception_resnet_v2_maps_and_lists_the_rest(tmp_path):
    p = tmp_path / "pipeline.config"
    p.write_text(INCEPTION_RESNET_V2_TF1)
    m = config_from_pipeline(p)
    c = m.config
    assert c.num_classes == 91
    assert (c.image_resize_mode, c.image_min_dim, c.image_max_dim) == ("minmax", 800, 1365)
    assert c.rpn_anchor_scales == [32, 64, 128, 256, 512] and c.rpn_anchor_ratios == [0.5, 1.0, 2.0]
    assert (c.rpn_nms_threshold, c.post_nms_rois_training, c.post_nms_rois_inference) == (0.7, 300, 300)
    assert (c.detection_min_confidence, c.detection_nms_threshold, c.detection_max_instances) == (0.0, 0.6, 100)
    assert c.mask_pool_size == 17  # 33x33 -> 34x34, noted
    assert (c.images_per_gpu, c.base_batch_size, c.learning_rate, c.momentum) == (1, 1, 0.0003, 0.9)
    assert (c.lr_schedule, c.lr_steps, c.lr_gamma) == ("step", [0.6, 0.8], 0.1)
    assert (c.gradient_clip_norm, c.aug_hflip, c.backbone) == (10.0, 0.5, "resnet50")
    unmapped = {path: reason for path, _, reason in m.unmapped}
    for path in ("model.faster_rcnn.feature_extractor.type", "model.faster_rcnn.first_stage_atrous_rate",
                 "model.faster_rcnn.initial_crop_size", "train_config.fine_tune_checkpoint", "train_config.num_steps",
                 "model.faster_rcnn.second_stage_mask_prediction_loss_weight", "eval_config.num_examples"):
        assert path in unmapped, path
    assert "--num-images" in unmapped["train_config.num_steps"]
    assert "--weights coco" in unmapped["train_config.fine_tune_checkpoint"]
    for path in ("model.faster_rcnn.num_classes", "train_config.batch_size",
                 "model.faster_rcnn.second_stage_post_processing.batch_non_max_suppression.max_detections_per_class",
                 "train_config.optimizer.use_moving_average", "train_config.data_augmentation_options.random_horizontal_flip"):
        assert path not in unmapped, path
    assert any("34x34" in n for n in m.notes) and any("[32, 64, 128, 256, 512]" in n for n in m.notes)


def test_pipeline_cli_writes_a_valid_config_yaml(tmp_path):
    """resnet101, cosine schedule, num_steps counted from the records, label map read."""
    make_dataset(tmp_path)  # train.tfrecord (3 records) + label_map.pbtxt with ids 1, 3, 7
    (tmp_path / "train.record").write_bytes((tmp_path / "train.tfrecord").read_bytes())
    p = tmp_path / "pipeline.config"
    p.write_text(RESNET101_COSINE)
    result = run_cli("config", "--from-pipeline", p, "--set", "name=pets")
    assert result.code == 0, result.err
    out = tmp_path / "config.yaml"
    out.write_text(result.out)
    c = Config.from_yaml(out)  # the output, comments and all, is a valid config file
    assert (c.name, c.backbone, c.num_classes, c.class_names) == ("pets", "resnet101", 4, ["BG", "cat", "Dog", "bird"])
    assert (c.image_min_dim, c.image_max_dim, c.images_per_gpu, c.base_batch_size) == (512, 768, 8, 8)
    assert c.rpn_anchor_ratios == [0.25, 0.5, 1.0, 2.0]  # TF's w/h [0.5, 1, 2, 4] as h/w
    assert (c.lr_schedule, c.learning_rate, c.warmup_iters, c.warmup_factor, c.momentum) == ("cosine", 0.008, 100, 0.1, 0.95)
    assert c.epochs == 8000  # 3000 steps x batch 8 / 3 records
    assert (c.mask_pool_size, c.train_rois_per_image, c.detection_min_confidence) == (14, 256, 0.3)
    assert "random_adjust_hue" in result.out and result.out.startswith("# from ")
    assert "mapped" in result.err
    data = yaml.safe_load(result.out)
    assert data["num_classes"] == 4
    # with --num-images the count comes from the user
    again = run_cli("config", "--from-pipeline", p, "--num-images", "12000")
    assert yaml.safe_load(again.out)["epochs"] == 2


def test_train_on_tfrecords_from_a_backbone_pth(tmp_path):
    """``maskrcnn train --data x.tfrecord --weights resnet.pth``: one epoch on the records, the body
    starting from the backbone file (the checkpoint's body differs from it only by training)."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    from maskrcnn.modeling.backbone import ResNetBody

    rng = np.random.default_rng(9)
    recs = []
    for k in range(3):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        masks = shapes(rng, 64, 64, 2)
        recs.append(od_example(image, masks, labels=[1, 7], filename=f"t{k}.png"))
    data = write_tfrecord(tmp_path / "train.record", recs)
    (tmp_path / "label_map.pbtxt").write_text(LABEL_MAP)
    torch.manual_seed(0)
    body = ResNetBody("resnet18", nn.BatchNorm2d, width=8)
    torch.save(body.state_dict(), tmp_path / "rn18.pth")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(dict(
        num_classes=4, backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=8,
        mask_head_convs=1, image_resize_mode="none", image_min_dim=64, rpn_anchor_scales=[8, 16, 32, 64, 128],
        train_rois_per_image=16, pre_nms_limit_training=200, post_nms_rois_training=50, pre_nms_limit_inference=100,
        post_nms_rois_inference=20, detection_max_instances=10, images_per_gpu=2, epochs=1, learning_rate=1e-6,
        base_batch_size=2, warmup_iters=1, num_workers=0, validate_every=0, layers="heads")))
    result = run_cli("train", "--config", cfg, "--data", data, "--weights", tmp_path / "rn18.pth", "--out", tmp_path / "runs")
    assert result.code == 0, result.err
    assert "loaded the ResNet body" in result.err
    last = next((tmp_path / "runs").rglob("epoch_0001.safetensors"))
    trained = load_file(str(last))
    for k, v in body.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(trained[f"backbone.body.{k}"], v), k  # layers=heads: the body stays as loaded


def test_crowd_objects_become_ignore_regions(tmp_path):
    """``image/object/is_crowd`` (create_coco_tf_record.py): crowd objects are ignore regions, written
    back as ``iscrowd: 1`` by convert, as COCO's own loader treats them."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    masks = shapes(rng, 20, 24, 3)
    rec = od_example(image, masks, labels=[1, 3, 7], mask_mode="raw_float", extra={"image/object/is_crowd": [0, 1, 0]})
    path = write_tfrecord(tmp_path / "c.record", [rec])
    (tmp_path / "label_map.pbtxt").write_text(LABEL_MAP)
    ds = load_dataset(path)
    got, ids = ds.load_mask(0)
    assert np.array_equal(got.transpose(2, 0, 1), masks[[0, 2]]) and ids.tolist() == [1, 3]
    crowd, crowd_ids = ds.load_ignore_instances(0)
    assert np.array_equal(crowd[:, :, 0], masks[1]) and crowd_ids.tolist() == [2]
    assert np.array_equal(ds.load_ignore_mask(0), masks[1])
    out = tmp_path / "coco.json"
    assert run_cli("convert", path, "--out", out).code == 0
    anns = json.loads(out.read_text())["annotations"]
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(1, 0), (3, 0), (2, 1)]
    assert np.array_equal(rle.decode(anns[2]["segmentation"]), masks[1])


@pytest.mark.parametrize("decay, expected", [("0.999", 0.999), (None, 0.9999), ("1.5", "moving_average_decay")])
def test_pipeline_moving_average_becomes_ema_decay(tmp_path, decay, expected):
    """use_moving_average: true -> ema_decay (TF's default decay 0.9999); a decay outside (0, 1) is a one-line error."""
    extra = "" if decay is None else f"\n    moving_average_decay: {decay}"
    text = RESNET101_COSINE.replace("use_moving_average: false", "use_moving_average: true" + extra)
    assert text != RESNET101_COSINE
    p = tmp_path / "pipeline.config"
    p.write_text(text)
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as info:
            config_from_pipeline(p)
        assert expected in str(info.value) and "(0, 1)" in str(info.value) and "pipeline.config" in str(info.value)
        return
    m = config_from_pipeline(p)
    assert m.config.ema_decay == expected and m.config.ema_warmup_steps == 2000
    assert any("ema_decay" in n for n in m.notes)
    assert not any(path.endswith("moving_average_decay") or path.endswith("use_moving_average") for path, _, _ in m.unmapped)
