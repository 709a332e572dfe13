"""Python parts of ``benchmarks/gpu_check.sh`` (the one-call GPU check, issue 14 item 7).

Subcommands (each prints one JSON line ``{"status": ok|fail|skipped, "figure": "...", ...}`` last,
which the shell script puts into its table; each also runs on the CPU for a dry run):

* ``env``: GPU name, driver, CUDA, torch/torchvision/onnxruntime versions.
* ``train-summary RUN_DIR``: steps/s and the last loss of a ``maskrcnn train`` run (from its
  ``metrics.jsonl``); fails when a loss is not finite or no step ran.
* ``oom --device D``: the out-of-memory fallback (``maskrcnn.engine.oom``). CUDA: one step of the
  shapes model with 1 image per pass is measured, the process is capped
  (``torch.cuda.set_per_process_memory_fraction``) at 1.5x that peak reserve + 64 MiB, then a run with
  ``images_per_gpu=8`` must hit an out-of-memory error, split its passes and finish its steps with
  finite losses. CPU (dry run): the model's training forward raises ``torch.OutOfMemoryError``
  for passes of more than 2 images (no allocator cap exists there).
* ``ort --device D``: ONNX Runtime's CUDA / TensorRT providers: skipped when neither is available
  (the plain ``onnxruntime`` package); else the random-weight shapes model is exported to ONNX and
  run with each provider, detections compared with the CPU provider's.
* ``table RESULTS.tsv [--json OUT]``: the final table of the stages.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def emit(status: str, figure: str, **extra: Any) -> int:
    print(json.dumps({"status": status, "figure": figure, **extra}), flush=True)
    return 0 if status in ("ok", "skipped") else 1


# ---------------------------------------------------------------------------- env
def cmd_env(args: argparse.Namespace) -> int:
    import platform

    info: dict[str, Any] = {"python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        bf16=torch.cuda.is_bf16_supported())
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return emit("fail", f"torch: {exc}", **info)
    from importlib import metadata

    for dist in ("torchvision", "onnxruntime", "onnxruntime-gpu", "pydantic", "pycocotools", "faster-coco-eval"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "missing"
    try:
        import onnxruntime

        info["ort_providers"] = onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        pass
    import subprocess

    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    figure = (f"{info.get('gpu', 'no GPU')}, driver {info['driver']}, torch {info['torch']} (CUDA {info['torch_cuda']}), "
              f"torchvision {info['torchvision']}")
    return emit("ok", figure, **info)


# ---------------------------------------------------------------------------- train summary
def read_train_records(run_dir: Path) -> list[dict[str, Any]]:
    files = sorted(run_dir.rglob("metrics.jsonl"))
    if not files:
        return []
    return [r for r in (json.loads(line) for line in files[-1].read_text().splitlines() if line.strip())
            if r.get("type") == "train"]


def loss_of(record: dict[str, Any]) -> float:
    value = record.get("loss", record.get("losses", {}).get("loss") if isinstance(record.get("losses"), dict) else None)
    return float("nan") if value is None else float(value)


def cmd_train_summary(args: argparse.Namespace) -> int:
    records = read_train_records(Path(args.run_dir))
    if not records:
        return emit("fail", f"no training step logged under {args.run_dir}")
    losses = [loss_of(r) for r in records]
    steps = max(int(r.get("step", 0)) for r in records)
    finite = all(math.isfinite(x) for x in losses)
    first, last = records[0], records[-1]
    span = float(last.get("time", 0)) - float(first.get("time", 0))
    # steady state: steps between the first and the last logged step over the time between them
    rate = (int(last["step"]) - int(first["step"])) / span if span > 0 else float("nan")
    images_s = float(last.get("images_per_s", float("nan")))
    figure = (f"{steps} steps in {args.seconds:.0f} s wall, {rate:.1f} steps/s ({images_s:.0f} img/s) after the first, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return emit("ok" if finite else "fail", figure + ("" if finite else ", NON-FINITE loss"),
                steps=steps, steps_per_s=rate, images_per_s=images_s, last_loss=losses[-1], first_loss=losses[0], finite=finite)


# ---------------------------------------------------------------------------- oom
def cmd_oom(args: argparse.Namespace) -> int:
    import torch

    from maskrcnn.config import Config
    from maskrcnn.data.synthetic import ShapesDataset
    from maskrcnn.engine.trainer import Trainer, train

    device = torch.device(args.device)
    splits: list[tuple[int, int]] = []
    original = Trainer._log_split

    def record(self: Trainer, old: int, new: int, error: str) -> None:
        splits.append((old, new))
        original(self, old, new, error)

    Trainer._log_split = record  # type: ignore[method-assign]
    base = Config.from_yaml("shapes_demo").with_overrides([
        f"image_min_dim={args.size}", f"image_max_dim={args.size}", "amp=none", "warmup_iters=1", "validate_every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, batch: int, steps: int) -> Any:
            cfg = base.with_overrides([f"images_per_gpu={batch}", f"base_batch_size={batch}", "epochs=1"])
            return train(cfg, ShapesDataset(batch * steps, seed=0), None, out_dir=tmp, run_dir=Path(tmp) / name, device=str(device), progress=False,
                         tensorboard=False, log_every=1, evaluate_fn=None)

        cap = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            run("one", 1, 2)
            one = torch.cuda.max_memory_reserved(device)  # the cap applies to the allocator's reserve
            gc.collect()
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(device).total_memory
            cap = one * 1.5 + 64 * 2**20  # room for passes of 1 image (and rounding), not of 8
            torch.cuda.set_per_process_memory_fraction(min(0.95, cap / total), device)
            print(f"peak reserve of a 1-image step {one / 2**20:.0f} MiB; capped at {cap / 2**20:.0f} MiB", file=sys.stderr)
        else:  # dry run: a forward of more than 2 images raises the allocator's error type
            from maskrcnn.modeling import MaskRCNN

            forward = MaskRCNN.forward

            def capped(self: Any, images: Any, targets: Any = None) -> Any:
                if self.training and len(images) > 2:
                    raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {len(images)} images per pass)")
                return forward(self, images, targets)

            MaskRCNN.forward = capped  # type: ignore[method-assign]
        t0 = time.perf_counter()
        try:
            result = run("oom", args.batch, args.steps)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            return emit("fail", f"run failed: {str(exc).splitlines()[0][:150]}", splits=splits)
        finally:
            if device.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0, device)
        seconds = time.perf_counter() - t0
        losses = [loss_of(r) for r in read_train_records(Path(tmp) / "oom")]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    path = " -> ".join([str(splits[0][0])] + [str(n) for _, n in splits]) if splits else "no split"
    ok = bool(splits) and finite and result.global_step == args.steps
    figure = (f"images/pass {path}, {result.global_step}/{args.steps} steps in {seconds:.1f} s, "
              f"losses finite {finite}" + (f", cap {cap / 2**20:.0f} MiB" if cap else " (simulated OOM)"))
    return emit("ok" if ok else "fail", figure, splits=splits, steps=result.global_step, losses=losses,
                cap_mib=None if cap is None else cap / 2**20)


# ---------------------------------------------------------------------------- onnx runtime
def cmd_ort(args: argparse.Namespace) -> int:
    try:
        import onnxruntime as ort
    except ImportError:
        return emit("skipped", "onnxruntime not installed")
    available = ort.get_available_providers()
    wanted = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in available]
    if args.device == "cpu":
        wanted = ["CPUExecutionProvider"]  # dry run: the same path with the CPU provider
    if not wanted:
        return emit("skipped", f"no CUDA/TensorRT provider (onnxruntime-gpu not installed; have {', '.join(available)})",
                    providers=available)
    import numpy as np
    import torch

    import maskrcnn
    from maskrcnn.export.onnx import export_onnx
    from maskrcnn.export.runtime import graph_inputs

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8) for _ in range(2)]
    eager = maskrcnn.load(None, config="shapes_demo", device="cpu", progress=False)
    ref = eager.detect(images)
    figures = []
    results: dict[str, Any] = {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_onnx(eager.model, Path(tmp) / "shapes.onnx")
        options = ort.SessionOptions()
        feed = graph_inputs([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images])
        for provider in wanted:
            try:
                session = ort.InferenceSession(str(path), options, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))
            except Exception as exc:  # noqa: BLE001 - reported in the table
                ok = False
                figures.append(f"{provider.replace('ExecutionProvider', '')}: {str(exc).splitlines()[0][:80]}")
                continue
            session.run(None, feed)  # warm-up (TensorRT builds its engine here)
            t0 = time.perf_counter()
            out = session.run(None, feed)
            ms = 1000 * (time.perf_counter() - t0)
            n = int(len(out[0]))
            n_ref = sum(len(d.scores) for d in ref)
            used = session.get_providers()[0]
            same = n == n_ref
            ok &= same and used == provider
            results[provider] = {"ms": ms, "detections": n, "eager_detections": n_ref, "used": used}
            figures.append(f"{provider.replace('ExecutionProvider', '')}: {ms:.1f} ms/batch of 2, "
                           f"{n} det (eager {n_ref})" + ("" if used == provider else f", FELL BACK to {used}"))
    return emit("ok" if ok else "fail", "; ".join(figures), providers=available, results=results)


# ---------------------------------------------------------------------------- table
def cmd_table(args: argparse.Namespace) -> int:
    rows = []
    for line in Path(args.results).read_text().splitlines():
        stage, status, seconds, figure = (line.split("\t") + ["", "", "", ""])[:4]
        rows.append({"stage": stage, "status": status, "seconds": float(seconds or 0), "figure": figure})
    width = max(len(r["stage"]) for r in rows) if rows else 5
    print(f"\n{'stage':<{width}}  status   seconds  key figure")
    print(f"{'-' * width}  -------  -------  ----------")
    for r in rows:
        print(f"{r['stage']:<{width}}  {r['status']:<7}  {r['seconds']:7.1f}  {r['figure']}")
    if args.json:
        details = {}
        if args.details:
            for p in sorted(Path(args.details).glob("*.json")):
                try:
                    details[p.stem] = json.loads(p.read_text())
                except (OSError, ValueError):
                    pass
        Path(args.json).write_text(json.dumps({"stages": rows, "details": details}, indent=1))
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    p = sub.add_parser("train-summary")
    p.add_argument("run_dir")
    p.add_argument("--seconds", type=float, default=0.0, help="wall time of the run")
    p = sub.add_parser("oom")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--steps", type=int, default=3)
    p = sub.add_parser("ort")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=128)
    p = sub.add_parser("table")
    p.add_argument("results")
    p.add_argument("--json")
    p.add_argument("--details", help="folder of per-stage JSON lines to include")
    args = parser.parse_args(argv)
    return {"env": cmd_env, "train-summary": cmd_train_summary, "oom": cmd_oom, "ort": cmd_ort,
            "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
