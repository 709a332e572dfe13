"""What a run tells its user: progress bar, JSON-lines metrics, TensorBoard, loss curves, class counts.

Only rank 0 writes; on other ranks a :class:`RunLogger` is silent. ``metrics.jsonl`` holds one
JSON object per line with a ``"type"``: ``train`` (every ``log_every`` optimizer steps: step,
epoch, lr, loss terms, images/s), ``val`` (per validation: loss terms, mask AP when evaluated),
``event`` (skipped samples, interruption, non-finite loss, ...).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from ..utils.files import atomic_write

__all__ = ["RunLogger", "ProgressBar", "format_class_counts", "plot_loss_curves", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1:02:05'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """A tqdm bar over one epoch's optimizer steps with losses, lr, images/s and the run's ETA."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: TextIO, initial: int = 0) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=stream, dynamic_ncols=True, leave=True)

    def update(self, losses: Mapping[str, float], lr: float, images_per_s: float, eta_s: float) -> None:
        """Advance one step and show the latest values."""
        if self._bar is None:
            return
        post = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()}
        post.update(lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}", eta=format_duration(eta_s))
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def write(self, line: str) -> bool:
        """Print above the bar; False when there is no bar."""
        if self._bar is None:
            return False
        self._bar.write(line)
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RunLogger:
    """Rank-0 output of a run: messages, ``metrics.jsonl``, TensorBoard scalars, progress bars.

    Args:
        run_dir: where ``metrics.jsonl`` (appended on resume) and ``tensorboard/`` go.
        enabled: False on ranks other than 0 (everything becomes a no-op).
        progress: show tqdm progress bars.
        tensorboard: write TensorBoard event files when ``tensorboard`` is installed.
        stream: where messages and bars go (stderr by default).
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.show_progress = progress
        self.stream = stream or sys.stderr
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._bar: ProgressBar | None = None
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
                except ImportError:
                    self._tb = None

    def info(self, message: str) -> None:
        """Print a line (above the progress bar if one is shown)."""
        if not self.enabled:
            return
        if self._bar is None or not self._bar.write(message):
            print(message, file=self.stream, flush=True)

    def log(self, record: Mapping[str, Any], step: int | None = None) -> None:
        """Append ``record`` to ``metrics.jsonl``; numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), **record}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")
        if self._tb is not None and step is not None:
            kind = rec.get("type", "metrics")
            for k, v in rec.items():
                if k in ("time", "type", "step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                self._tb.add_scalar(f"{kind}/{k}", v, step)

    def event(self, name: str, message: str, **fields: Any) -> None:
        """A notable event: printed and logged."""
        self.info(message)
        self.log({"type": "event", "event": name, "message": message, **fields})

    def progress_bar(self, total: int, desc: str, initial: int = 0) -> ProgressBar:
        """Start the bar of an epoch at step ``initial`` (closes the previous one)."""
        self.close_bar()
        self._bar = ProgressBar(total, desc, self.enabled and self.show_progress, self.stream, initial)
        return self._bar

    def update_bar(self, losses: Mapping[str, float], lr: float, images_per_s: float, eta_s: float) -> None:
        """Advance the current bar by one step (no-op without a bar)."""
        if self._bar is not None:
            self._bar.update(losses, lr, images_per_s, eta_s)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Close the bar and flush TensorBoard."""
        self.close_bar()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_class_counts(
    class_names: Sequence[str],
    image_counts: Sequence[int],
    instance_counts: Sequence[int],
    expected_instances: Sequence[float] | None = None,
) -> str:
    """A table of the instances and images per class (background row 0 omitted).

    ``expected_instances`` is the per-epoch instance count under repeat-factor sampling.
    """
    width = max([len("class")] + [len(n) for n in class_names[1:]])
    head = f"{'class':<{width}}  {'images':>8}  {'instances':>10}"
    if expected_instances is not None:
        head += f"  {'per epoch (repeat factors)':>27}"
    lines = [head]
    for c in range(1, len(class_names)):
        line = f"{class_names[c]:<{width}}  {image_counts[c]:>8d}  {instance_counts[c]:>10d}"
        if expected_instances is not None:
            line += f"  {expected_instances[c]:>27.1f}"
        if instance_counts[c] == 0:
            line += "  <- no training instances"
        lines.append(line)
    return "\n".join(lines)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return rows


def plot_loss_curves(metrics_path: str | Path, out_png: str | Path, terms: Sequence[str] | None = None) -> Path | None:
    """Plot training (and validation) losses against the optimizer step; None when nothing to plot.

    ``terms``: the loss terms of the right-hand panel (default: every ``loss_*`` key of the records).
    """
    rows = _read_metrics(Path(metrics_path))
    train = [r for r in rows if r.get("type") == "train"]
    val = [r for r in rows if r.get("type") == "val"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    terms = list(terms or dict.fromkeys(k for r in train for k in r if k.startswith("loss_")))
    fig, (ax_total, ax_terms) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [r["step"] for r in train]
    ax_total.plot(steps, [r.get("loss", float("nan")) for r in train], label="train")
    if val:
        ax_total.plot([r["step"] for r in val], [r.get("loss", float("nan")) for r in val], "o-", label="validation")
    ax_total.set(title="total loss (weighted)", xlabel="optimizer step", ylabel="loss")
    ax_total.legend()
    for term in terms:
        if any(term in r for r in train):
            ax_terms.plot(steps, [r.get(term, float("nan")) for r in train], label=term)
    ax_terms.set(title="loss terms (train, weighted)", xlabel="optimizer step", yscale="log")
    ax_terms.legend(fontsize="small")
    fig.tight_layout()
    out_png = atomic_write(out_png, partial(fig.savefig, dpi=100, format="png"))
    plt.close(fig)
    return out_png
