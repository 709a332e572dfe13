"""``maskrcnn convert SRC --out FILE.json [--format F] [--option KEY=VALUE ...]``: any format -> COCO JSON;
``maskrcnn convert --weights W --out model.safetensors [--config C]``: any weights -> our checkpoint.

Loads ``SRC`` with :func:`maskrcnn.data.formats.load_dataset` (format detected unless given),
writes the COCO file atomically and prints one summary line::

    wrote val.json: 32 images, 1126 instances, 1 class (nucleus)

and on stderr what it skipped or repaired (counts by kind and the first few; ``check-data``
lists them all): images it could not use, annotations it could not read, instances with an
empty mask or an undeclared class (none of these is written).

Images stored inside the annotations (TFRecords) are written to ``FILE_images/`` next to the JSON.
Loader options are ``--option KEY=VALUE`` with YAML values, e.g.
``--option class_attribute=name --option class_ids=[1,3]``.

With ``--weights`` (``imagenet``, ``coco``, ``coco-v2``, a torchvision or backbone-only state
dict, a Matterport ``.h5``, one of our checkpoints) the model of ``--config`` (default: the one
the weights imply) is built, the weights loaded as ``train --weights`` loads them (backbone-only
weights fill the ResNet body, class layers of another class count start anew; a Matterport
``.h5`` is loaded exactly, ``architecture: matterport``) and written as our checkpoint
(``.safetensors`` file, or a folder with ``model.safetensors`` + ``config.yaml``), which
``train --weights``, ``detect``, ``evaluate`` and ``maskrcnn.load`` take.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError
from ..utils.files import ensure_output_file

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``convert`` sub-command."""
    from ..data.formats import FORMATS

    p = subparsers.add_parser(
        "convert",
        help="convert annotations (VIA, LabelMe, mask folders, YOLO, COCO, TFRecord) to one COCO JSON",
        description="Convert a dataset in any supported format to a COCO instances JSON (RLE masks).",
    )
    p.add_argument("src", metavar="SRC", nargs="?", help="annotation file or dataset folder")
    p.add_argument("--out", required=True, metavar="FILE.json", help="COCO JSON to write (with --weights: our "
                   "checkpoint, a .safetensors file or a folder)")
    p.add_argument("--weights", metavar="W", help="convert weights instead: imagenet, coco, coco-v2, a torchvision or "
                   "backbone-only .pth, a Matterport .h5 or a checkpoint -> our checkpoint at --out")
    p.add_argument("--config", metavar="C", help="with --weights: config YAML of the model to write (default: the "
                   "weights'; with a Matterport .h5 also a YAML of Matterport attributes)")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (detected when omitted)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="loader option, YAML value (repeatable), e.g. class_attribute=name")
    return p


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[x, y]"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values parsed as YAML)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--option {item!r}: expected KEY=VALUE, e.g. --option class_attribute=name")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise DataError(f"--option {item!r}: the value is not valid YAML; quote it") from None
    return options


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` (or ``--weights``) to ``args.out``; print a one-line summary. Returns 0."""
    from ..data.convert import extract_images, write_coco
    from ..data.formats import load_dataset
    from ..data.problems import summary_lines

    if args.weights is not None:
        return _convert_weights(args)
    if args.src is None:
        raise DataError("convert: give an annotation file or dataset folder (SRC), or --weights W to convert weights")
    if args.config is not None:
        raise DataError("--config: only with --weights (the config of the checkpoint to write); remove it")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise DataError(f"--out {out}: give a .json file name")
    ensure_output_file(out)
    dataset = load_dataset(args.src, args.format, **parse_options(args.option))
    images_dir = out.parent / f"{out.stem}_images"
    extracted = extract_images(dataset, images_dir)  # images held in the annotation files (TFRecords)
    coco = write_coco(dataset, out)
    n_inst = sum(1 for a in coco["annotations"] if not a["iscrowd"])
    n_crowd = len(coco["annotations"]) - n_inst
    names = [c["name"] for c in coco["categories"]]
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    line = (f"wrote {out}: {len(coco['images'])} images, {n_inst} instances, "
            f"{len(names)} class{'es' if len(names) != 1 else ''} ({shown})")
    if n_crowd:
        line += f", {n_crowd} ignore regions"
    if extracted:
        line += f"; {extracted} images written to {images_dir}"
    problems = getattr(dataset, "problems", [])
    if problems:
        line += f"; {len(problems)} problems skipped (see `maskrcnn check-data {args.src}`)"
    print(line)
    for text in summary_lines(problems, str(args.src), action="converting"):
        print(text, file=sys.stderr)
    return 0


def _convert_weights(args: argparse.Namespace) -> int:
    """``--weights W --out CHECKPOINT``: one summary line; a one-line error for what cannot be done."""
    from ..errors import WeightsError
    from ..weights import weights_to_checkpoint

    if args.src is not None or args.format is not None or args.option:
        raise WeightsError("convert --weights: SRC, --format and --option are for annotations; convert weights or "
                           "annotations, one per call")
    out = Path(args.out)
    if out.suffix and out.suffix != ".safetensors":
        raise WeightsError(f"--out {out}: our checkpoint is a .safetensors file or a folder; e.g. --out model.safetensors")
    if out.suffix:
        ensure_output_file(out)
    config = weights_to_checkpoint(args.weights, out, args.config, log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {out}: {config.architecture} {config.backbone}, {config.num_classes} classes, from {args.weights}")
    return 0
