"""check-data: a fixture dataset with planted defects; each is found on the right image and instance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn.config import Config
from maskrcnn.data import Dataset
from maskrcnn.data.check import CheckOptions, Report, check_dataset, resize_geometry

SIZE = 100  # every fixture image is SIZE x SIZE


def _noise(seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE, channels) if channels > 1 else (SIZE, SIZE)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _square(y: int, x: int, side: int, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y:y + side, x:x + side] = True
    return m


class PlantedDataset(Dataset):
    """Images on disk; masks and class ids given per image in ``image_info['instances']``."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[int] = []
        self.add_class("t", 1, "cell")
        self.add_class("t", 2, "rare")

    def add(self, root: Path, name: str, pixels: np.ndarray | None, masks: list[np.ndarray], ids: list[int],
            shape: tuple[int, int] = (SIZE, SIZE)) -> None:
        path = root / name
        if pixels is not None:
            Image.fromarray(pixels).save(path)
        self.add_image("t", name, path, masks=masks, ids=ids, shape=shape)

    def load_image(self, image_id: int) -> np.ndarray:
        self.loads.append(image_id)
        return super().load_image(image_id)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        h, w = info["shape"]
        masks = np.stack(info["masks"], axis=-1) if info["masks"] else np.zeros((h, w, 0), dtype=bool)
        return masks, np.array(info["ids"], dtype=np.int32)


def _cells(k: int, side: int = 12) -> list[np.ndarray]:
    return [_square(5 + 25 * (i % 3), 5 + 25 * (i // 3), side) for i in range(k)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[PlantedDataset, Report]:
    root = tmp_path_factory.mktemp("planted")
    ds = PlantedDataset()
    for i in range(4):  # clean images: 12 'cell' instances in all
        ds.add(root, f"ok{i}.png", _noise(i), _cells(3), [1, 1, 1])
    ds.add(root, "rare.png", _noise(10), [_square(40, 40, 20)], [2])
    ds.add(root, "truncated.png", _noise(11), _cells(1), [1])
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    ds.add(root, "sizemismatch.png", _noise(12), [_square(5, 5, 12, (90, SIZE))], [1], shape=(90, SIZE))
    ds.add(root, "countmismatch.png", _noise(13), _cells(2), [1])
    ds.add(root, "undeclared.png", _noise(14), _cells(2), [1, 7])
    ds.add(root, "empty.png", _noise(15), [_square(5, 5, 12), np.zeros((SIZE, SIZE), bool)], [1, 1])
    ds.add(root, "tiny.png", _noise(16), [_square(50, 50, 3), _square(5, 5, 12)], [1, 1])
    ds.add(root, "dup_a.png", _noise(17), _cells(1), [1])
    ds.add(root, "dup_b.png", _noise(17), _cells(1), [1])
    ds.add(root, "background.png", _noise(18), [], [])
    ds.add(root, "gray.png", _noise(19, channels=1), _cells(1), [1])
    twin = _square(60, 60, 14)
    twin2 = twin.copy()
    twin2[60, 60] = False  # IoU 195/196
    ds.add(root, "overlap.png", _noise(20), [_square(5, 5, 12), twin, twin2], [1, 1, 1])
    ds.prepare()
    ds.problems = [dict(image=str(root / "tiny.png"), instance=1, kind="degenerate_polygon",
                        message="polygon has 2 points; it needs at least 3")]
    config = Config.create(num_classes=3, image_min_dim=120, image_max_dim=200)
    return ds, check_dataset(ds, config, config_label="cfg.yaml")


def _one(report: Report, kind: str) -> list[tuple[str, int | None]]:
    return [(Path(f.image).name if f.image else None, f.instance) for f in report.of_kind(kind)]


def test_planted_defects_are_found_on_the_right_image_and_instance(planted: tuple[PlantedDataset, Report]) -> None:
    ds, report = planted
    assert _one(report, "unreadable_image") == [("truncated.png", None)]
    assert _one(report, "size_mismatch") == [("sizemismatch.png", None)]
    assert "100x90" in report.of_kind("size_mismatch")[0].message and "100x100" in report.of_kind("size_mismatch")[0].message
    assert _one(report, "count_mismatch") == [("countmismatch.png", None)]
    assert "2 masks but 1 class ids" in report.of_kind("count_mismatch")[0].message
    assert _one(report, "undeclared_class") == [("undeclared.png", 1)]
    assert "class id 7" in report.of_kind("undeclared_class")[0].message
    assert _one(report, "empty_mask") == [("empty.png", 1)]
    assert _one(report, "tiny_mask") == [("tiny.png", 0)]
    assert "9 px" in report.of_kind("tiny_mask")[0].message
    assert _one(report, "duplicate_image") == [("dup_b.png", None)]
    assert "dup_a.png" in report.of_kind("duplicate_image")[0].message
    assert _one(report, "background_only") == [("background.png", None)]
    assert _one(report, "channel_mismatch") == [("gray.png", None)]
    assert "set image_channel_count: 1" in report.of_kind("channel_mismatch")[0].message
    assert _one(report, "duplicate_instance") == [("overlap.png", 2)]
    assert "instance 1" in report.of_kind("duplicate_instance")[0].message
    assert "IoU 0.99" in report.of_kind("duplicate_instance")[0].message
    assert _one(report, "degenerate_polygon") == [("tiny.png", 1)]
    assert report.of_kind("degenerate_polygon")[0].severity == "warning"
    assert report.of_kind("degenerate_polygon")[0].image_id == ds.image_from_source_map["t.tiny.png"]
    # every image is read exactly once (streaming)
    assert sorted(ds.loads) == list(range(ds.num_images))


def test_severities_and_exit_code(planted: tuple[PlantedDataset, Report]) -> None:
    _, report = planted
    assert {f.kind for f in report.errors} == {"unreadable_image", "size_mismatch", "count_mismatch",
                                               "undeclared_class", "channel_mismatch"}
    assert report.exit_code == 1 and not report.ok
    assert {f.kind for f in report.infos} == {"background_only", "image_sizes", "resize"}


def test_dataset_wide_findings(planted: tuple[PlantedDataset, Report]) -> None:
    ds, report = planted
    # 'cell': 12 (ok*) + truncated 1 + size 1 + count 1 + undeclared 1 + empty 2 + tiny 2 + dup 2 + gray 1 + overlap 3
    assert report.class_instances == [0, 26, 1]
    assert report.class_images[1:] == [14, 1]
    (imb,) = report.of_kind("class_imbalance")
    assert imb.severity == "warning" and "'cell' has 26" in imb.message and "'rare' has 1" in imb.message
    assert "repeat_factor_threshold" in imb.message
    (sizes,) = report.of_kind("image_sizes")
    assert "all 15 images are 100x100" in sizes.message  # the truncated one is not counted
    (resize,) = report.of_kind("resize")
    assert "upscales every image 1.20x (to 120x120)" in resize.message and "image_min_dim=120" in resize.message
    (small,) = report.of_kind("small_objects")
    # non-empty, loaded instances: all but the empty one; all are < 32 px after 1.2x except none
    assert small.message.startswith(f"{report.num_instances - 1} of {report.num_instances - 1} objects")
    assert "rpn_anchor_scales: [" in small.message
    (mixed,) = report.of_kind("mixed_channels")
    assert "1 ch: 1" in mixed.message and "3 ch: 14" in mixed.message


def test_text_report_lists_errors_first_and_truncates(planted: tuple[PlantedDataset, Report]) -> None:
    _, report = planted
    text = report.format_text(max_per_kind=10)
    lines = text.splitlines()
    finding_lines = [ln for ln in lines if ln.split(" ", 1)[0] in ("error", "warning", "info")]
    severities = [ln.split()[0] for ln in finding_lines]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    assert any("truncated.png" in ln and ln.startswith("error") for ln in finding_lines)
    assert any("undeclared.png instance 1" in ln for ln in finding_lines)
    assert "FAILED: 5 errors;" in text
    short = report.format_text(max_per_kind=0)
    assert "... 1 more (see --json for all)" in short and "undeclared.png" not in short


def test_json_report_parses(planted: tuple[PlantedDataset, Report]) -> None:
    _, report = planted
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["summary"]["errors"] == 5 and data["summary"]["background_only"] == 1
    assert data["findings"][0]["severity"] == "error"
    hit = [f for f in data["findings"] if f["kind"] == "undeclared_class"]
    assert hit[0]["instance"] == 1 and hit[0]["image"].endswith("undeclared.png")
    assert data["classes"][2] == {"id": 2, "name": "rare", "instances": 1, "images": 1}
    assert data["image_sizes"] == [{"width": 100, "height": 100, "count": 15}]


def _clean(root: Path, n: int = 3) -> PlantedDataset:
    ds = PlantedDataset()
    for i in range(n):
        ds.add(root, f"c{i}.png", _noise(100 + i), [_square(10, 10, 30), _square(50, 50, 30)], [1, 2])
    ds.prepare()
    return ds


def test_clean_dataset_passes(tmp_path: Path) -> None:
    ds = _clean(tmp_path)
    config = Config.create(num_classes=3, image_min_dim=128, image_max_dim=128, image_resize_mode="pad64",
                           rpn_anchor_scales=[8, 16, 32, 64, 128])
    report = check_dataset(ds, config)
    assert report.ok and report.exit_code == 0
    assert report.errors == [] and report.warnings == []
    (resize,) = report.of_kind("resize")
    assert "pad64" in resize.message and "upscales every image 1.28x (to 128x128)" in resize.message
    assert "OK: no errors" in report.format_text()


def test_config_mismatches(tmp_path: Path) -> None:
    ds = _clean(tmp_path, n=2)
    config = Config.create(num_classes=5, max_gt_instances=1, image_resize_mode="minmax", image_min_dim=40,
                           image_max_dim=40, class_names=["BG", "a", "b", "c", "d"])
    report = check_dataset(ds, config, config_label="my.yaml")
    (nc,) = report.of_kind("num_classes")
    assert nc.severity == "error" and "my.yaml num_classes=5" in nc.message and "set num_classes: 3" in nc.message
    assert [f.image_id for f in report.of_kind("too_many_instances")] == [0, 1]
    assert report.of_kind("class_names")[0].severity == "warning"
    (resize,) = report.of_kind("resize")
    assert "downscales every image 0.40x (to 40x40)" in resize.message
    (down,) = report.of_kind("strong_downscale")
    assert "2 images" in down.message


def test_small_objects_suggests_anchor_scales(tmp_path: Path) -> None:
    ds = PlantedDataset()
    for i in range(4):
        ds.add(tmp_path, f"s{i}.png", _noise(200 + i), _cells(6, side=10), [1] * 5 + [2])
    ds.prepare()
    report = check_dataset(ds, Config.create(num_classes=3, image_resize_mode="none"))
    (small,) = report.of_kind("small_objects")
    assert small.message.startswith("24 of 24 objects (100%) are smaller than the smallest anchor (32 px)")
    assert "rpn_anchor_scales: [8, 16, 32, 64, 128]" in small.message
    big = check_dataset(ds, Config.create(num_classes=3, image_resize_mode="none", rpn_anchor_scales=[8, 16, 32, 64, 128]))
    assert big.of_kind("small_objects") == []
    assert big.of_kind("class_imbalance") == []  # 20 vs 4: ratio 5 <= 10


@pytest.mark.parametrize("mode, dims, expected", [
    ("square", (128, 256), "upscales every image 1.28x (to 128x128); then pads to 256x256 (75% padding on average)"),
    ("crop", (64, 64), "keeps every image at its size; then trains on random 64x64 crops covering 41% of an image"),
])
def test_square_and_crop_specifics(tmp_path: Path, mode: str, dims: tuple[int, int], expected: str) -> None:
    ds = _clean(tmp_path, n=2)
    report = check_dataset(ds, Config.create(num_classes=3, image_resize_mode=mode, image_min_dim=dims[0],
                                             image_max_dim=dims[1], inference_resize_mode="square"))
    assert expected in report.of_kind("resize")[0].message


def test_mixed_sizes_channels_and_depths(tmp_path: Path) -> None:
    ds = _clean(tmp_path, n=3)
    deep = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 13).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grayscale, 50x40 (WxH)
    ds.add_image("t", "deep.png", tmp_path / "deep.png", masks=[_square(5, 5, 20, (40, 50))], ids=[1], shape=(40, 50))
    ds.prepare()
    report = check_dataset(ds, Config.create(num_classes=3, image_min_dim=100, image_max_dim=200))
    assert report.image_sizes == {(100, 100): 3, (50, 40): 1}
    assert "2 image sizes (WxH: count): 100x100: 3, 50x40: 1" in report.of_kind("image_sizes")[0].message
    assert "upscales 1 image (2.50x), keeps 3 images at their size" in report.of_kind("resize")[0].message
    assert "uint16: 1, uint8: 3" in report.of_kind("mixed_depth")[0].message
    assert "1 ch: 1, 3 ch: 3" in report.of_kind("mixed_channels")[0].message
    assert [Path(f.image).name for f in report.of_kind("channel_mismatch")] == ["deep.png"]
    assert report.dtypes == {"uint8": 3, "uint16": 1}


def test_resize_geometry_modes() -> None:
    assert resize_geometry(480, 640, Config.create(image_min_dim=800, image_max_dim=1333)) == (800 / 480, 800, 1066)
    assert resize_geometry(400, 2000, Config.create(image_min_dim=800, image_max_dim=1333))[0] == pytest.approx(1333 / 2000)
    sq = Config.create(image_resize_mode="square", image_min_dim=800, image_max_dim=1024)
    assert resize_geometry(600, 900, sq) == (1024 / 900, 683, 1024)
    assert resize_geometry(1000, 1000, Config.create(image_resize_mode="pad64", image_min_dim=512))[0] == 1.0
    assert resize_geometry(300, 400, Config.create(image_resize_mode="none")) == (1.0, 300, 400)


def test_options_thresholds(planted: tuple[PlantedDataset, Report]) -> None:
    ds, _ = planted
    strict = check_dataset(ds, Config.create(num_classes=3), options=CheckOptions(tiny_area=200, duplicate_iou=1.0))
    tiny = {(Path(f.image).name, f.instance) for f in strict.of_kind("tiny_mask")}
    assert ("tiny.png", 0) in tiny and ("ok0.png", 0) in tiny  # 144 px < 200
    assert strict.of_kind("duplicate_instance") == []


# ---------------------------------------------------------------------------- the command, on real formats


def _write_dsb(root: Path, name: str, seed: int, masks: list[np.ndarray] | None, *, truncate: bool = False) -> None:
    """One ``<name>/images/<name>.png`` + ``<name>/masks/m<k>.png`` folder (Kaggle DSB 2018 layout)."""
    (root / name / "images").mkdir(parents=True)
    path = root / name / "images" / f"{name}.png"
    Image.fromarray(_noise(seed)).save(path)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    if masks is not None:
        (root / name / "masks").mkdir()
        for k, m in enumerate(masks):
            Image.fromarray(m.astype(np.uint8) * 255).save(root / name / "masks" / f"m{k}.png")


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from maskrcnn.cli import main

    code = main(argv)
    return code, capsys.readouterr().out


def test_cli_instance_mask_folder_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "dsb"
    _write_dsb(root, "a", 1, [_square(10, 10, 30), _square(50, 50, 30)])
    _write_dsb(root, "b", 2, [_square(10, 10, 30)], truncate=True)
    _write_dsb(root, "c", 3, [_square(10, 10, 30), _square(5, 5, 10, (SIZE, 80))])  # 2nd mask 80 px wide
    _write_dsb(root, "d", 4, None)  # no masks/: background only
    _write_dsb(root, "e", 5, [np.zeros((SIZE, SIZE), bool), _square(40, 40, 30)])
    code, out = _run_cli(["check-data", str(root), "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    found = {(f["kind"], Path(f["image"]).name if f["image"] else None, f["instance"]) for f in data["findings"]}
    assert ("unreadable_image", "b.png", None) in found
    assert ("mask_size_mismatch", "c.png", "m1.png") in found
    assert ("unlabelled_image", "d.png", None) in found and ("background_only", "d.png", None) in found
    assert ("empty_mask", "e.png", 0) in found
    empty = next(f for f in data["findings"] if f["kind"] == "empty_mask")
    assert empty["ref"] == "m0.png"
    assert data["summary"]["config"] == "defaults" and data["summary"]["images"] == 5
    assert {f["kind"] for f in data["findings"] if f["severity"] == "error"} == {"unreadable_image", "mask_size_mismatch"}
    code, text = _run_cli(["check-data", str(root)], capsys)
    assert code == 1 and "FAILED: 2 errors;" in text
    assert "e.png instance 0 (m0.png)" in text


def test_cli_clean_folder_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "dsb"
    for i in range(3):
        _write_dsb(root, f"img{i}", 10 + i, [_square(10, 10, 30), _square(55, 50, 30)])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("num_classes: 2\nimage_resize_mode: pad64\nimage_min_dim: 128\nrpn_anchor_scales: [8, 16, 32, 64, 128]\n")
    code, text = _run_cli(["check-data", str(root), "--config", str(cfg), "--format", "instance-masks"], capsys)
    assert code == 0 and "OK: no errors" in text and "config: cfg.yaml" in text
    code, out = _run_cli(["check-data", str(root), "-c", str(cfg), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert [f["kind"] for f in data["findings"]] == ["image_sizes", "resize"]  # info only
    code, out = _run_cli(["check-data", str(root), "--json"], capsys)  # defaults: 800 px from 100 px
    (up,) = [f for f in json.loads(out)["findings"] if f["kind"] == "strong_upscale"]
    assert code == 0 and "upscaled 8.0x" in up["message"] and "image_min_dim (e.g. 192)" in up["message"]
    cfg.write_text("num_classes: 5\n")
    code, out = _run_cli(["check-data", str(root), "-c", str(cfg), "--json"], capsys)
    assert code == 1
    (nc,) = [f for f in json.loads(out)["findings"] if f["kind"] == "num_classes"]
    assert "cfg.yaml num_classes=5" in nc["message"] and "set num_classes: 2" in nc["message"]


def test_coco_loader_problems_are_reported(tmp_path: Path) -> None:
    from maskrcnn.data.formats import load_dataset

    for name, seed in (("p.png", 1), ("q.png", 2)):
        Image.fromarray(_noise(seed)).save(tmp_path / name)
    square = [10, 10, 40, 10, 40, 40, 10, 40]
    coco = {
        "images": [{"id": 1, "file_name": "p.png", "width": SIZE, "height": SIZE},
                   {"id": 2, "file_name": "q.png", "width": SIZE, "height": SIZE}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [square], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[5, 5, 20, 20]], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [[150, 150, 190, 150, 190, 190]], "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 9, "segmentation": [square], "iscrowd": 0},
            {"id": 14, "image_id": 2, "category_id": 1, "segmentation": [square], "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = load_dataset(tmp_path / "ann.json")
    report = check_dataset(ds, Config.create(num_classes=2))
    got = {(f.kind, Path(f.image).name, f.instance, f.severity) for f in report.findings if f.image}
    assert ("degenerate_polygon", "p.png", "annotation 11", "warning") in got
    assert ("unknown_class", "q.png", "annotation 13", "error") in got
    # annotation 12 lies wholly outside the image: its mask would be empty, so the loader skips it
    assert ("outside_image", "q.png", "annotation 12", "error") in got
    assert report.of_kind("empty_mask") == [] and ds.image_info[1]["instances"][0]["ref"] == "annotation 14"
    assert report.exit_code == 1


def test_mixed_polarity_suggests_inversion(tmp_path: Path) -> None:
    """Bright-background and dark-background images in one dataset: a warning naming the fields to set."""
    ds = PlantedDataset()
    masks, ids = [_square(10, 10, 30)], [1]
    for i in range(3):  # fluorescence-like: mean ~0.1
        ds.add(tmp_path, f"dark{i}.png", (_noise(i) // 8).astype(np.uint8), masks, ids)
    ds.add(tmp_path, "stained.png", (255 - _noise(9) // 8).astype(np.uint8), masks, ids)  # mean ~0.94
    ds.add(tmp_path, "grey.png", _noise(10), masks, ids)  # mean ~0.5: neither
    ds.prepare()
    config = Config.create(num_classes=3, image_min_dim=128, image_max_dim=128)
    (finding,) = check_dataset(ds, config).of_kind("mixed_polarity")
    assert finding.severity == "warning"
    assert "1 image bright on average" in finding.message and "stained.png" in finding.message and "and 3 dark" in finding.message
    assert "invert_bright_images: true" in finding.message
    fixed = config.replace(invert_bright_images=True, image_normalization="per_image")
    assert check_dataset(ds, fixed).of_kind("mixed_polarity") == []
