"""Mixed precision for the student: float32 weights, gradients and optimizer state; bf16/fp16 compute.

AdamW applied to bfloat16 weights rounds every update to the weight's precision: with 8 mantissa bits a
weight of magnitude ``w`` only moves when the step exceeds about ``|w|·2⁻⁹``, so at ``lr = 1e-6`` most of a
model's updates are silently dropped. Here the student keeps float32 weights (the *master* copy the
optimizer updates, with float32 moments) and its forward and backward run under ``torch.autocast`` in the
run's dtype, which casts each matmul's inputs to bf16 and keeps reductions such as softmax in float32.
Log-probs, losses and metrics are float32 throughout (:mod:`gopd_lab.lm.logprobs` casts logits before any
reduction). Teachers and references never train, so they are simply stored in the run's dtype.
"""

from __future__ import annotations

import contextlib

import torch


def autocast(dtype: torch.dtype | None, device: torch.device | str):
    """``torch.autocast`` on ``device``'s type in ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def compute_dtype(weights: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``weights`` run in: autocast's when it is on for their device, else their own."""
    kind = weights.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weights.dtype


def student_dtypes(dtype: torch.dtype, mixed_precision: bool) -> tuple[torch.dtype, torch.dtype | None]:
    """``(storage dtype of the student, autocast dtype)`` for a run in ``dtype``: float32 storage under autocast
    for a low-precision ``dtype`` when ``mixed_precision`` is on, else the student stored in ``dtype``.

    float16 under autocast is refused: without loss scaling (``torch.amp.GradScaler``) small float16 gradients
    underflow to zero, and bfloat16 (float32's exponent range) needs none."""
    if mixed_precision and dtype == torch.float16:
        from gopd_lab.config import ConfigError

        raise ConfigError(
            "float16 mixed precision needs loss scaling, which gopd_lab does not do; "
            "use dtype='bfloat16', or mixed_precision=False"
        )
    if mixed_precision and dtype == torch.bfloat16:
        return torch.float32, dtype
    return dtype, None
