"""Loading a state dict into a model: class layers re-initialised, ``conv1`` adapted, the rest exact."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsError, first_line

CLASS_DEPENDENT = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                   "roi_heads.mask_predictor.mask_fcn_logits.")


def adapt_conv1(weight: Tensor, channels: int) -> Tensor:
    """Adapt RGB ``conv1`` weights ``[O, 3, k, k]`` to ``channels`` inputs.

    The first three channels keep the RGB filters (fewer channels take the mean of the RGB filters),
    each extra channel gets the mean of the RGB filters, and everything is rescaled by ``3 / channels``
    so the response to an image of equal channels is unchanged.
    """
    mean = weight.mean(dim=1, keepdim=True)
    if channels < 3:
        new = mean.repeat(1, channels, 1, 1)
    else:
        new = torch.cat([weight, mean.repeat(1, channels - 3, 1, 1)], dim=1)
    return new * (3.0 / channels)


def load_into(model: nn.Module, sd: dict[str, Tensor], *, source: str, reinit_classes: bool,
              log: Any = print, backbone_only: bool = False) -> None:
    """Load ``sd`` into ``model``, adapting what can be adapted and naming what cannot.

    * class-dependent layers of another class count are re-initialised when ``reinit_classes``
      (fine-tuning; Matterport's ``exclude``), otherwise a :class:`WeightsError`;
    * ``conv1`` of another input channel count is adapted from the RGB filters;
    * ``backbone_only``: ``sd`` holds the ResNet body (:func:`backbone_state_dict`); every other
      part keeps the model's own initialisation, and only missing body keys are errors;
    * any other shape mismatch or missing key is a :class:`WeightsError` naming the first one.
    """
    own = model.state_dict()
    sd = dict(sd)
    dropped = []
    for k in list(sd):
        if k.endswith("num_batches_tracked") and k not in own:
            del sd[k]
            continue
        if k in own and sd[k].shape != own[k].shape:
            if k.startswith(CLASS_DEPENDENT):
                if not reinit_classes:
                    raise WeightsError(f"{source}: has {_classes_of(sd)} classes but the config has "
                                       f"{_classes_of(own)}; set num_classes: {_classes_of(sd)} (or fine-tune "
                                       "with maskrcnn train, which re-initialises the class layers)")
                dropped.append(k)
                del sd[k]
            elif (k == "backbone.body.conv1.weight" and sd[k].shape[1] == 3
                  and sd[k].shape[0] == own[k].shape[0] and sd[k].shape[2:] == own[k].shape[2:]):
                log(f"{source}: adapting conv1 from 3 to {own[k].shape[1]} input channels (RGB filter means)")
                sd[k] = adapt_conv1(sd[k], own[k].shape[1])
            else:
                raise WeightsError(f"{source}: {k} has shape {tuple(sd[k].shape)} but the model expects "
                                   f"{tuple(own[k].shape)}; the checkpoint is for another backbone/head setting "
                                   "(check backbone, fpn_channels, box_head_dim, mask_head_channels)")
    if dropped:
        log(f"{source}: re-initialised the class-dependent layers (cls_score, bbox_pred, mask_fcn_logits) "
            f"for {_classes_of(own)} classes")
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # e.g. a tensor of a type that cannot be copied into a parameter
        raise WeightsError(f"{source}: cannot load the weights into the model ({first_line(exc, limit=160)}); "
                           "use weights saved from this architecture") from None
    missing = [k for k in missing if k not in dropped]
    if backbone_only:
        missing = [k for k in missing if k.startswith("backbone.body.") and not k.endswith("num_batches_tracked")]
        if not missing:
            log(f"{source}: loaded the ResNet body ({len(sd)} tensors); the FPN, RPN and heads start from their "
                "initialisation, as when training from scratch")
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); "
                           "the checkpoint is for another architecture (v1/v2) or backbone depth")
    if missing:
        raise WeightsError(f"{source}: missing key {missing[0]!r} ({len(missing)} in all); "
                           "the checkpoint is for another architecture (v1/v2) or backbone depth")


def _classes_of(sd: dict[str, Tensor]) -> int | str:
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    return int(w.shape[0]) if w is not None else "?"

