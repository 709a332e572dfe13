"""Verify our Matterport-compatible inference against Matterport's own code (TF2 port, akTwelve/Mask_RCNN).

What it does
------------
1. Creates a separate venv (default ``benchmarks/.matterport_venv/``, git-ignored) with TensorFlow
   2.x + tf-keras (run with ``TF_USE_LEGACY_KERAS=1``), h5py, numpy and scikit-image, unless it
   is already there.
2. Gets Matterport's TF2-compatible code (MIT) into a git-ignored folder (default
   ``benchmarks/.matterport_src/``): ``git clone https://github.com/akTwelve/Mask_RCNN``, or from
   ``--source PATH`` (a local clone, or a bare git dir: its ``mrcnn/`` is read with ``git archive``).
   Nothing of it is ever copied into this repository.
3. Writes a small driver next to the outputs and runs it in that venv. Per backbone (``--backbones``,
   default resnet50 and resnet101) the driver builds ``MaskRCNN(mode="inference")`` with a small
   config (square resize, IMAGE_MIN_DIM/MAX_DIM 256/320, NUM_CLASSES 8, DETECTION_MIN_CONFIDENCE 0.5;
   ``--resize-mode pad64``, ``--num-classes``, ``--min-confidence`` change them; use another
   ``--workdir`` per setting, the file names carry only the backbone),
   gives it seeded random weights that make it detect (below), saves them with
   ``keras_model.save_weights("random_<r50|r101>.h5")``, writes ``config_<tag>.json`` (the
   UPPER_CASE attributes set, and Matterport's ``to_dict()``) and runs ``model.detect`` on
   scikit-image photographs (astronaut 512x512, coffee 400x600, chelsea 300x451, rocket 427x640),
   one image per call, dumping into ``matterport_<tag>.npz`` per image ``i``: ``image_i`` (uint8
   input), ``rois_i`` ([N, (y1, x1, y2, x2)] int pixels, y2/x2 exclusive), ``class_ids_i``,
   ``scores_i``, ``masks_i`` ([H, W, N] bool), and for diagnosis the network's raw outputs
   ``detections_i`` ([100, (y1, x1, y2, x2, class, score)] normalised), ``mrcnn_class_i``
   ([1000, C] probs), ``rpn_rois_i`` ([1000, 4] normalised proposals), ``molded_i`` (the
   network input, mean subtracted), ``window_i``.
4. In this interpreter (our venv; ``--ours-src`` puts a worktree's ``src`` first on the path) it
   loads each ``.h5`` with our loader and compares per image: the same detections (one-to-one
   match by class and box IoU), class ids, boxes within 0.5 px, scores within 1e-3, mask IoU
   >= 0.99. It prints a table per image and overall and writes ``--json``.

Random weights that detect
--------------------------
Conv/Dense kernels are He-normal (gain 2 before a ReLU, 1 otherwise), biases N(0, 0.05).
BatchNorm is non-trivial: moving variance log-uniform in [0.05, 2] (so eps 1e-3 vs 1e-5 shows),
moving mean N(0, 0.1), beta N(0, 0.1), gamma sqrt(var) * U(0.5, 1.5) (x0.3 on the last BatchNorm
of each residual branch) so activations keep their scale through 100+ layers. Three heads are then
calibrated on the photographs (three extra detect passes): the RPN's fg-bg logit is scaled to
std 2 (no saturated, exactly tied scores), the class logits are scaled and the background bias set
so that about 6% of the proposals pass DETECTION_MIN_CONFIDENCE (at least 2% on every photograph),
and the mask logits are scaled to std 3 around 0 (masks with real edges). conv1 is scaled by 1/60
(the input is pixels minus the mean) so that features are ~1, and the box-delta layers by 0.3.

Runtime patches of Matterport's code: none were needed with TensorFlow 2.21 + tf-keras 2.21 on
Python 3.11 (``distutils`` is still in 3.11; on 3.12+ setuptools' shim provides it, hence
setuptools in the venv). If one becomes necessary it goes in ``DRIVER`` below (monkeypatching,
never editing the clone) and is listed in the report's ``patches``.

Usage (CPU, a few minutes; ``OMP_NUM_THREADS`` is honoured by both sides)::

    PYTHONPATH=src .venv/bin/python benchmarks/verify_matterport.py \
        [--source /path/to/Mask_RCNN(.git)] [--ours-src ../other-worktree/src] \
        [--workdir /tmp/mrcnn_verify] [--backbones resnet50 resnet101] [--json out.json] \
        [--skip-matterport]   # reuse the .h5 / .npz already in --workdir
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
URL = "https://github.com/akTwelve/Mask_RCNN"
REQUIREMENTS = ["tensorflow==2.21.0", "tf-keras==2.21.0", "h5py", "numpy", "scikit-image", "setuptools"]
TAGS = {"resnet50": "r50", "resnet101": "r101"}
IMAGES = ["astronaut", "coffee", "chelsea", "rocket"]

#: Pass criteria of issue 16.
BOX_TOL_PX = 0.5
SCORE_TOL = 1e-3
MASK_IOU_MIN = 0.99


# ---------------------------------------------------------------------------------------- setup
def _run(cmd: list[str], **kw: Any) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_venv(venv: Path, python: str) -> Path:
    """The venv's interpreter, creating the venv and installing ``REQUIREMENTS`` once."""
    py = venv / "bin" / "python"
    marker = venv / ".verify_matterport_ok"
    if marker.exists():
        return py
    if not py.exists():
        _run([python, "-m", "venv", str(venv)])
    _run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS])
    marker.write_text(" ".join(REQUIREMENTS) + "\n")
    return py


def ensure_source(dest: Path, source: str | None) -> str:
    """Put Matterport's ``mrcnn/`` package (and its LICENSE) under ``dest``; returns the commit."""
    if (dest / "mrcnn" / "model.py").exists() and (dest / "COMMIT").exists():
        return (dest / "COMMIT").read_text().strip()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = None
    if source is None:  # a fresh shallow clone
        tmp = Path(tempfile.mkdtemp(prefix="mrcnn_clone_"))
        _run(["git", "clone", "-q", "--depth", "1", URL, str(tmp / "Mask_RCNN")])
        source = str(tmp / "Mask_RCNN")
    src = Path(source)
    if (src / "mrcnn" / "model.py").exists():  # a clone with a work tree
        shutil.copytree(src / "mrcnn", dest / "mrcnn", dirs_exist_ok=True)
        if (src / "LICENSE").exists():
            shutil.copy(src / "LICENSE", dest / "LICENSE")
        git = ["git", "-C", str(src)]
    else:  # a bare git dir (or a .git folder): only mrcnn/ is extracted (large assets may be absent)
        git = ["git", f"--git-dir={src}"]
        archive = subprocess.run([*git, "archive", "HEAD", "mrcnn", "LICENSE"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    (dest / "COMMIT").write_text(commit + "\n")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return commit


# ---------------------------------------------------------------------------------------- driver
DRIVER = r'''
"""Runs in the Matterport venv: build, randomise, save .h5, detect, dump .npz (see verify_matterport.py)."""
import json, os, sys
import numpy as np

args = json.loads(sys.argv[1])
sys.path.insert(0, args["matterport_src"])
PATCHES = []  # runtime patches applied to Matterport's code (none needed so far)

import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
tf.config.threading.set_inter_op_parallelism_threads(1)
from mrcnn import model as modellib, utils
from mrcnn.config import Config
import tensorflow.keras.layers as KL
import tensorflow.keras.models as KM
import skimage.data

RELU_NEXT = ("conv1", "branch2a", "branch2b", "rpn_conv_shared", "mrcnn_class_conv1", "mrcnn_class_conv2",
             "mrcnn_mask_conv", "mrcnn_mask_deconv")

# conv1 sees pixels minus the mean (std ~60): scaled so features are ~1; box deltas kept ~0.5
GAIN_SCALE = {"conv1": 1 / 60.0 ** 2, "rpn_bbox_pred": 0.1, "mrcnn_bbox_fc": 0.1}


def leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, KM.Model):
            yield from leaf_layers(layer)
        elif layer.get_weights():
            yield layer


def randomise(model, rng):
    for layer in leaf_layers(model):
        inner = getattr(layer, "layer", layer)  # TimeDistributed
        w = layer.get_weights()
        if isinstance(inner, KL.BatchNormalization):
            c = w[0].shape[0]
            var = np.exp(rng.uniform(np.log(0.05), np.log(2.0), c))
            gamma = np.sqrt(var) * rng.uniform(0.5, 1.5, c) * (0.3 if layer.name.endswith("2c") else 1.0)
            new = [gamma, rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), var]
        else:
            k = w[0]
            if isinstance(inner, KL.Conv2DTranspose):
                fan_in = k.shape[3] * (k.shape[0] // inner.strides[0]) * (k.shape[1] // inner.strides[1])
            else:
                fan_in = int(np.prod(k.shape[:-1]))
            gain = 2.0 if any(t in layer.name for t in RELU_NEXT) else 1.0
            gain *= GAIN_SCALE.get(layer.name, 1.0)
            new = [rng.normal(0, np.sqrt(gain / fan_in), k.shape)] + [rng.normal(0, 0.05, b.shape) for b in w[1:]]
        layer.set_weights([a.astype(np.float32) for a in new])


def find(model, name):
    for layer in leaf_layers(model):
        if layer.name == name:
            return layer
    raise KeyError(name)


def scale_layer(model, name, a, bias=None):
    layer = find(model, name)
    k, b = layer.get_weights()
    layer.set_weights([(k * a).astype(np.float32), (b * a if bias is None else bias).astype(np.float32)])


class Capture:
    """Wraps keras_model.predict so model.detect's raw outputs are kept for diagnosis."""
    def __init__(self, km):
        self.km, self.predict, self.out = km, km.predict, None
    def __call__(self, *a, **k):
        self.out = self.predict(*a, **k)
        return self.out


def main():
    out = args["out"]
    images = [getattr(skimage.data, n)() for n in args["images"]]
    for backbone in args["backbones"]:
        tag = {"resnet50": "r50", "resnet101": "r101"}[backbone]
        user = dict(NAME="verify", BACKBONE=backbone, NUM_CLASSES=args["num_classes"], GPU_COUNT=1, IMAGES_PER_GPU=1,
                    IMAGE_RESIZE_MODE=args["resize_mode"], IMAGE_MIN_DIM=args["min_dim"], IMAGE_MAX_DIM=args["max_dim"],
                    DETECTION_MIN_CONFIDENCE=args["min_confidence"])
        cfg = type("VerifyConfig", (Config,), dict(user))()
        model = modellib.MaskRCNN(mode="inference", config=cfg, model_dir=os.path.join(out, "logs"))
        km = model.keras_model
        rng = np.random.default_rng(args["seed"])
        randomise(km, rng)
        cap = Capture(km)
        km.predict = cap
        def outputs(index):
            """Output ``index`` of the network on every photograph (one detect call each)."""
            res = []
            for img in images:
                r = model.detect([img])[0]
                res.append((r, cap.out[index][0]))
            return res
        # 1. RPN: fg - bg logit to std 2 (and centred: about half the anchors lean foreground)
        p = np.concatenate([o for _, o in outputs(5)])  # rpn_class [anchors, 2]
        d = np.log(np.maximum(p[:, 1], 1e-30)) - np.log(np.maximum(p[:, 0], 1e-30))
        layer = find(km, "rpn_class_raw")
        k, b = layer.get_weights()
        a = 2.0 / max(d.std(), 1e-6)
        k, b = k * a, b * a
        b[1::2] -= a * d.mean() / 2
        b[0::2] += a * d.mean() / 2
        layer.set_weights([k.astype(np.float32), b.astype(np.float32)])
        # 2. class logits: scale a and background bias so ~6% of the proposals pass the threshold
        klayer = find(km, "mrcnn_class_logits")
        k, b = klayer.get_weights()
        per_image = []
        for _, probs in outputs(1):  # mrcnn_class [rois, C] -> logits up to a row constant
            logp = np.log(np.maximum(probs, 1e-30))
            # logits = W x + b with the current b: remove b's contribution before scaling
            per_image.append(logp - logp.mean(1, keepdims=True) - (b - b.mean()))
        best = None
        for a in np.linspace(0.25, 6.0, 47):
            for bg in np.linspace(-6.0, 2.0, 33):
                fracs = []
                for logits0 in per_image:
                    z = a * logits0
                    z[:, 0] += bg
                    z = z - z.max(1, keepdims=True)
                    pr = np.exp(z) / np.exp(z).sum(1, keepdims=True)
                    fracs.append(float(np.mean((pr.argmax(1) > 0) & (pr.max(1) >= args["min_confidence"]))))
                err = abs(np.mean(fracs) - 0.06) + 10 * max(0.0, 0.02 - min(fracs))
                if best is None or err < best[0]:
                    best = (err, a, bg, fracs)
        _, a, bg, frac = best
        nb = np.zeros_like(b)
        nb[0] = bg
        klayer.set_weights([(k * a).astype(np.float32), nb.astype(np.float32)])
        # 3. mask logits to std 3 around 0 (on the detected RoIs)
        lg = []
        for r, m in outputs(3):
            n = len(r["class_ids"])
            m = np.clip(m[:n][np.arange(n), :, :, r["class_ids"]], 1e-7, 1 - 1e-7)
            lg.append(np.log(m / (1 - m)).ravel())
        lg = np.concatenate(lg)
        if len(lg):
            mlayer = find(km, "mrcnn_mask")
            k, b = mlayer.get_weights()
            am = 3.0 / max(lg.std(), 1e-6)
            mlayer.set_weights([(k * am).astype(np.float32), ((b - lg.mean()) * am).astype(np.float32)])
        h5 = os.path.join(out, f"random_{tag}.h5")
        km.save_weights(h5)
        json.dump({"user": user, "matterport": {k2: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                for k2, v in cfg.to_dict().items()},
                   "seed": args["seed"], "calibration": {"class_logit_scale": float(a), "bg_bias": float(bg),
                                                          "passing_fraction_per_image": frac},
                   "patches": PATCHES, "tensorflow": tf.__version__},
                  open(os.path.join(out, f"config_{tag}.json"), "w"), indent=1, default=str)
        dump = {}
        for i, (name, img) in enumerate(zip(args["images"], images)):
            r = model.detect([img])[0]
            det, mclass, _, _, rpn_rois = cap.out[:5]
            molded, _, windows = model.mold_inputs([img])
            dump.update({f"image_{i}": img, f"rois_{i}": r["rois"], f"class_ids_{i}": r["class_ids"],
                         f"scores_{i}": r["scores"], f"masks_{i}": r["masks"].astype(bool),
                         f"detections_{i}": det[0], f"mrcnn_class_{i}": mclass[0], f"rpn_rois_{i}": rpn_rois[0],
                         f"molded_{i}": molded[0], f"window_{i}": windows[0]})
            sc = r["scores"] if len(r["scores"]) else np.zeros(1)
            print(f"{backbone} {name} {img.shape}: {len(r['class_ids'])} detections, "
                  f"scores {sc.min():.3f}..{sc.max():.3f}", flush=True)
        dump["names"] = np.array(args["images"])
        np.savez_compressed(os.path.join(out, f"matterport_{tag}.npz"), **dump)
        if args.get("layout"):
            write_layout(h5, os.path.join(out, f"LAYOUT_{tag}.txt"))
        tf.keras.backend.clear_session()


LAYOUT_HEADER = """# Layout of a Keras (tf-keras %s) save_weights .h5 of Matterport's MaskRCNN(mode="inference").
# Root attrs: layer_names (every layer, in model order, weightless ones too), backend, keras_version.
# Per layer: group f[layer] with attr weight_names; each weight is the dataset f[layer][weight_name]
# (weight_name contains a '/', so it is a nested path: f["conv1"]["conv1"]["kernel:0"]).
# The RPN is a nested model: its three convs live in the one group "rpn_model"
# (f["rpn_model"]["rpn_conv_shared"]["kernel:0"], ...). TimeDistributed heads keep the head name.
# Conv2D kernels HWIO; Dense kernels (in, out); Conv2DTranspose kernels (h, w, out, in).
# BatchNorm weights: gamma, beta, moving_mean, moving_variance (eps 1e-3, not stored).
# layer: weight_name shape dtype, ...
"""


def write_layout(h5, path):
    import h5py
    import tf_keras
    lines = [LAYOUT_HEADER.rstrip("\n") % tf_keras.__version__]
    with h5py.File(h5, "r") as f:
        shown = {k: (v.decode() if isinstance(v, bytes) else v[:6].tolist() if getattr(v, "ndim", 0) else v)
                 for k, v in f.attrs.items()}
        lines.append(f"file attrs (first 6 of a list): {shown}")
        for lname in [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]:
            g = f[lname]
            wn = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            if not wn:
                continue
            lines.append(f"{lname}: " + ", ".join(f"{n} {tuple(g[n].shape)} {g[n].dtype}" for n in wn))
    open(path, "w").write("\n".join(lines) + "\n")


main()
'''


def run_matterport(py: Path, matterport_src: Path, out: Path, opts: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    driver = out / "matterport_driver.py"
    driver.write_text(DRIVER)
    cfg = {"matterport_src": str(matterport_src), "out": str(out), "backbones": opts.backbones,
           "images": opts.images, "num_classes": opts.num_classes, "min_dim": opts.min_dim, "max_dim": opts.max_dim,
           "min_confidence": opts.min_confidence, "resize_mode": opts.resize_mode, "seed": opts.seed,
           "threads": opts.threads, "layout": True}
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               TF_ENABLE_ONEDNN_OPTS="0", OMP_NUM_THREADS=str(opts.threads), PYTHONPATH="")
    _run([str(py), str(driver), json.dumps(cfg)], env=env)


# ---------------------------------------------------------------------------------------- ours
def _matterport_config(user: dict[str, Any]) -> Any:
    """A Matterport-style config object (our compat ``Config`` subclass) with the driver's attributes."""
    from maskrcnn.compat.mrcnn.config import Config as MConfig

    return type("VerifyConfig", (MConfig,), dict(user))()


def ours_detect(api: str, h5: Path, cfg_json: dict[str, Any], images: list[np.ndarray], workdir: Path,
                threads: int) -> list[dict[str, np.ndarray]]:
    """Our detections per image as Matterport dicts: rois [N, (y1, x1, y2, x2)] float, class_ids,
    scores, masks [H, W, N] bool."""
    import torch

    torch.set_num_threads(threads)
    mcfg = _matterport_config(cfg_json["user"])
    if api == "compat":
        from maskrcnn.compat.mrcnn import model as modellib

        model = modellib.MaskRCNN(mode="inference", config=mcfg, model_dir=str(workdir / "ours_logs"))
        model.load_weights(str(h5), by_name=True)
        return [model.detect([img])[0] for img in images]
    import maskrcnn
    from maskrcnn.config import Config

    predictor = maskrcnn.load(str(h5), config=Config.from_matterport(mcfg), device="cpu")
    out = []
    for img in images:
        d = predictor.detect(img)[0]
        boxes = np.asarray(d.boxes, dtype=np.float64).reshape(-1, 4)
        out.append({"rois": boxes[:, [1, 0, 3, 2]], "class_ids": np.asarray(d.class_ids),
                    "scores": np.asarray(d.scores), "masks": np.moveaxis(np.asarray(d.masks, dtype=bool), 0, -1)})
    return out


# ---------------------------------------------------------------------------------------- compare
def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [N, 4] x [M, 4] boxes (y1, x1, y2, x2), edges exclusive."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    y1 = np.maximum(a[:, None, 0], b[None, :, 0])
    x1 = np.maximum(a[:, None, 1], b[None, :, 1])
    y2 = np.minimum(a[:, None, 2], b[None, :, 2])
    x2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def compare_image(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], threshold: float = 0.0) -> dict[str, Any]:
    """Match each Matterport detection (in score order) to the unused one of ours of the same class
    with the highest box IoU (> 0.5, ties to the closest score); report the worst differences over the matched pairs, and the
    unmatched detections of each side (``at_threshold``: its score is within ``SCORE_TOL`` of the
    confidence ``threshold``, so a rounding difference may legitimately keep it on one side only)."""
    rb, ob = ref["rois"].astype(np.float64), ours["rois"].astype(np.float64)
    iou = _box_iou(rb, ob)
    used: set[int] = set()
    pairs = []
    for i in np.argsort(-ref["scores"], kind="stable"):
        # ties in IoU (boxes clipped to a zero-height line at the window's edge round to the same
        # 1-pixel box) go to the closest score
        cand = [(iou[i, j], -abs(float(ref["scores"][i]) - float(ours["scores"][j])), -j) for j in range(len(ob))
                if j not in used and ours["class_ids"][j] == ref["class_ids"][i] and iou[i, j] > 0.5]
        if cand:
            j = -max(cand)[2]
            used.add(j)
            pairs.append((int(i), j))
    box_d, score_d, mask_iou, worst = [], [], [], []
    for i, j in pairs:
        box_d.append(float(np.abs(rb[i] - ob[j]).max()))
        score_d.append(float(abs(float(ref["scores"][i]) - float(ours["scores"][j]))))
        a, b = ref["masks"][..., i], ours["masks"][..., j]
        union = np.logical_or(a, b).sum()
        mask_iou.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    n_ref, n_ours = len(rb), len(ob)
    row = {"matterport": n_ref, "ours": n_ours, "matched": len(pairs),
           "same_order": bool(n_ref == n_ours and np.array_equal(ref["class_ids"], ours["class_ids"])
                              and all(i == j for i, j in pairs)),
           "max_box_px": max(box_d, default=0.0), "max_score_diff": max(score_d, default=0.0),
           "min_mask_iou": min(mask_iou, default=1.0), "mean_mask_iou": float(np.mean(mask_iou)) if mask_iou else 1.0,
           "boxes_over_tol": sum(d > BOX_TOL_PX for d in box_d), "scores_over_tol": sum(d > SCORE_TOL for d in score_d),
           "masks_under_tol": sum(m < MASK_IOU_MIN for m in mask_iou)}
    unmatched_ref = sorted(set(range(n_ref)) - {i for i, _ in pairs})
    unmatched_ours = sorted(set(range(n_ours)) - used)
    for side, dets, idx in (("matterport", ref, unmatched_ref), ("ours", ours, unmatched_ours)):
        for i in idx:
            score = float(dets["scores"][i])
            worst.append({"side": side, "index": int(i), "class_id": int(dets["class_ids"][i]), "score": score,
                          "roi": np.asarray(dets["rois"][i], dtype=float).tolist(),
                          "at_threshold": bool(abs(score - threshold) <= SCORE_TOL)})
    row["unmatched"] = worst
    row["unmatched_at_threshold"] = sum(u["at_threshold"] for u in worst)
    row["pass"] = bool(n_ref == n_ours == len(pairs) and row["boxes_over_tol"] == 0 and row["scores_over_tol"] == 0
                       and row["masks_under_tol"] == 0)
    return row


COLUMNS = [("backbone", "backbone", "s"), ("image", "image", "s"), ("size", "size", "s"),
           ("matterport", "n mp", "d"), ("ours", "n ours", "d"), ("matched", "matched", "d"),
           ("same_order", "order", ""), ("max_box_px", "max box px", ".3f"),
           ("max_score_diff", "max score diff", ".2e"), ("min_mask_iou", "min mask IoU", ".4f"),
           ("mean_mask_iou", "mean mask IoU", ".4f"), ("unmatched_at_threshold", "unmatched @thr", "d"),
           ("pass", "pass", "")]


def format_rows(rows: list[dict[str, Any]]) -> str:
    sys.path.insert(0, str(HERE))
    from common import format_table

    return format_table([{k: (str(v) if isinstance(v, bool) else v) for k, v in r.items()} for r in rows],
                        [(k, h, "s" if f == "" else f) for k, h, f in COLUMNS])


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help=f"local clone or bare git dir of akTwelve/Mask_RCNN (default: git clone {URL})")
    ap.add_argument("--matterport-src", type=Path, default=HERE / ".matterport_src",
                    help="where Matterport's mrcnn/ is put (git-ignored)")
    ap.add_argument("--venv", type=Path, default=HERE / ".matterport_venv", help="the TensorFlow venv (git-ignored)")
    ap.add_argument("--venv-python", default=sys.executable, help="interpreter that creates the venv (3.10-3.13)")
    ap.add_argument("--workdir", type=Path, default=HERE / ".matterport_work",
                    help="where .h5, config .json, .npz and the driver are written")
    ap.add_argument("--ours-src", type=Path, default=REPO / "src", help="the src folder of the code under test")
    ap.add_argument("--api", choices=["load", "compat"], default="load",
                    help="load: maskrcnn.load(h5, config=...).detect; compat: maskrcnn.compat.mrcnn MaskRCNN.detect")
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"], choices=list(TAGS))
    ap.add_argument("--images", nargs="+", default=IMAGES, help="scikit-image data sample names (RGB)")
    ap.add_argument("--num-classes", type=int, default=8)
    ap.add_argument("--min-dim", type=int, default=256)
    ap.add_argument("--max-dim", type=int, default=320, help="a multiple of 64")
    ap.add_argument("--min-confidence", type=float, default=0.5, help="DETECTION_MIN_CONFIDENCE")
    ap.add_argument("--resize-mode", choices=["square", "pad64"], default="square", help="IMAGE_RESIZE_MODE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--skip-matterport", action="store_true", help="reuse the files in --workdir")
    ap.add_argument("--json", type=Path, help="write the report here")
    opts = ap.parse_args(argv)
    if opts.max_dim % 64 or (opts.resize_mode == "pad64" and opts.min_dim % 64):
        ap.error("--max-dim (and --min-dim with pad64) must be a multiple of 64 (Matterport's network needs it)")

    report: dict[str, Any] = {"tolerances": {"box_px": BOX_TOL_PX, "score": SCORE_TOL, "mask_iou": MASK_IOU_MIN}}
    if not opts.skip_matterport:
        t = time.time()
        py = ensure_venv(opts.venv, opts.venv_python)
        report["matterport_commit"] = ensure_source(opts.matterport_src, opts.source)
        run_matterport(py, opts.matterport_src.resolve(), opts.workdir.resolve(), opts)
        report["matterport_seconds"] = round(time.time() - t, 1)
    sys.path.insert(0, str(opts.ours_src.resolve()))
    import maskrcnn

    report["ours_src"] = str(opts.ours_src.resolve())
    report["ours_module"] = maskrcnn.__file__
    report["api"] = opts.api
    rows: list[dict[str, Any]] = []
    for backbone in opts.backbones:
        tag = TAGS[backbone]
        h5 = opts.workdir / f"random_{tag}.h5"
        cfg_json = json.loads((opts.workdir / f"config_{tag}.json").read_text())
        report.setdefault("config", {})[tag] = cfg_json["user"]
        data = np.load(opts.workdir / f"matterport_{tag}.npz")
        names = [str(n) for n in data["names"]]
        images = [data[f"image_{i}"] for i in range(len(names))]
        try:
            ours = ours_detect(opts.api, h5, cfg_json, images, opts.workdir, opts.threads)
        except Exception as exc:  # the code under test may not load this file yet: report, go on
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{backbone}: ours failed: {msg}", flush=True)
            rows.append({"backbone": backbone, "image": "-", "error": msg, "pass": False})
            continue
        for i, name in enumerate(names):
            ref = {k: data[f"{k}_{i}"] for k in ("rois", "class_ids", "scores", "masks")}
            row = {"backbone": backbone, "image": name, "size": "x".join(map(str, images[i].shape[:2])),
                   **compare_image(ref, ours[i], threshold=cfg_json["user"]["DETECTION_MIN_CONFIDENCE"])}
            rows.append(row)
    ok = [r for r in rows if "error" not in r]
    total = {"backbone": "all", "image": "", "size": "", "matterport": sum(r["matterport"] for r in ok),
             "ours": sum(r["ours"] for r in ok), "matched": sum(r["matched"] for r in ok),
             "same_order": all(r["same_order"] for r in ok) if ok else False,
             "max_box_px": max((r["max_box_px"] for r in ok), default=0.0),
             "max_score_diff": max((r["max_score_diff"] for r in ok), default=0.0),
             "min_mask_iou": min((r["min_mask_iou"] for r in ok), default=1.0),
             "mean_mask_iou": float(np.mean([r["mean_mask_iou"] for r in ok])) if ok else 0.0,
             "unmatched_at_threshold": sum(r["unmatched_at_threshold"] for r in ok),
             "pass": bool(rows) and all(r["pass"] for r in rows)}
    print(format_rows(ok + [total]))
    for r in rows:
        if "error" in r:
            print(f"{r['backbone']}: ERROR {r['error']}")
        for u in r.get("unmatched", [])[:10]:
            print(f"  {r['backbone']} {r['image']}: unmatched {u['side']} #{u['index']} class {u['class_id']} "
                  f"score {u['score']:.4f} roi {np.round(u['roi'], 1).tolist()}"
                  + (" (at the confidence threshold)" if u["at_threshold"] else ""))
    report.update(rows=rows, overall=total)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0 if total["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
