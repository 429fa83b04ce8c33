"""The one rule the GPU presets (``configs/gpu-*.yaml``) state their expected memory by: an estimate from the model
dimensions written in each preset, not a measurement (``bench/gpu_smoke.py`` measures on a GPU; ``tests/test_gpu_memory.py``
measures the same parts on CPU at tiny shapes, float32, and checks each against this rule). GiB = 2**30 bytes.

- ``static`` (held between steps): the student's float32 weights and AdamW moments (12 P; its gradients are freed
  after each step, ``zero_grad(set_to_none=True)``), the reference = the student's initial weights in float32
  (4 P), the teacher in its dtype (2 P_T in bf16).
- ``rollout``: the key-value cache, rows × positions × L × 2 (k, v) × kv heads × head dim × 2 B, and under mixed
  precision autocast's bf16 copies of the student's weights (2 P).
- ``scoring``: the teacher runs over every row of the batch in one pass (not micro-batched): one layer's
  intermediates, (3 I_T + 4 H_T) × 2 B per token, plus the LM heads' chunks of float32 rows (``CUDA_CHUNK_BYTES``
  each): 4 for the teacher (its logits, their log-softmax, the rank comparison and its reduction, as measured on
  CPU), 1 more for the reference's log-softmax when λ ≠ 1.
- ``update``, per micro-batch of ``n`` tokens under gradient checkpointing: the student's float32 gradients (4 P, the
  LM head's included), autocast's bf16 weight copies (2 P, mixed precision), the float32 layer inputs kept for
  backward (n × H × 4 B × L), one layer recomputed ((8 H + 3 I) × 2 B per token) and 2 chunks of float32 logits
  (the logits and their softmax in the chunked log-prob pass).
- ``peak`` = static + the largest of the three phases.
- ``vllm`` (``rollout_backend="vllm"``, not in ``peak``): the engine's bf16 copy of the student (2 P) and its KV
  cache sized from the batch (the ``rollout`` KV term); on CUDA the engine sleeps from the end of the rollout to the
  next weight sync (``gopd_lab.scale.vllm_rollout``), so this is held during the rollout only, beside ``static``.

P counts the embeddings (once when tied to the output layer), attention and MLP matrices; biases and norms
(< 0.1 %) are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gopd_lab.lm.logprobs import CUDA_CHUNK_BYTES

GIB = 2**30


@dataclass(frozen=True)
class Dims:
    """A decoder's shape: layers, hidden, MLP width, attention heads, KV heads, head dim, vocabulary rows, tied."""

    L: int
    H: int
    inter: int  # the MLP width ("I" in the presets)
    heads: int
    kv: int
    hd: int
    V: int
    tied: bool

    @property
    def params(self) -> int:
        attn = self.H * self.heads * self.hd * 2 + self.H * self.kv * self.hd * 2  # q, o; k, v
        return self.V * self.H * (1 if self.tied else 2) + self.L * (attn + 3 * self.H * self.inter)

    @classmethod
    def parse(cls, text: str) -> Dims:
        """``"L=24 H=896 I=4864 heads=14 kv=2 hd=64 V=151936 tied=1"`` → :class:`Dims`."""
        kv = dict(re.findall(r"(\w+)=(\d+)", text))
        ints = {k: int(kv[k]) for k in ("L", "H", "heads", "kv", "hd", "V")}
        return cls(**ints, inter=int(kv["I"]), tied=kv["tied"] == "1")


def estimate(
    student: Dims,
    teacher: Dims,
    *,
    rows: int,
    positions: int,
    micro_rows: int,
    chunk_bytes: int = CUDA_CHUNK_BYTES,
    mixed_precision: bool = True,
    act_bytes: int = 2,
    teacher_bytes: int = 2,
    reference: bool = True,
) -> dict[str, float]:
    """GiB per part (see the module doc) for ``rows`` sequences of ``positions`` tokens, ``micro_rows`` per
    micro-batch in the update. The defaults are the presets' (CUDA, bf16 under mixed precision); a float32 run on CPU
    is ``chunk_bytes=CHUNK_BYTES, mixed_precision=False, act_bytes=4, teacher_bytes=4``. ``reference``: a reference
    model is held and run (λ ≠ 1)."""
    p, pt = student.params, teacher.params
    tokens, micro = rows * positions, micro_rows * positions
    s, t = student, teacher
    copies = 2 * p if mixed_precision else 0  # autocast's bf16 weight copies, live while the student computes
    kv = rows * positions * s.L * 2 * s.kv * s.hd * act_bytes
    out = {
        "static": (12 * p + (4 * p if reference else 0) + teacher_bytes * pt) / GIB,
        "rollout": (kv + copies) / GIB,
        "scoring": (tokens * (3 * t.inter + 4 * t.H) * act_bytes + (4 + int(reference)) * chunk_bytes) / GIB,
        "update": (
            4 * p + copies + micro * s.H * 4 * s.L + micro * (8 * s.H + 3 * s.inter) * act_bytes + 2 * chunk_bytes
        )
        / GIB,
    }
    out["peak"] = out["static"] + max(out["rollout"], out["scoring"], out["update"])
    out["vllm"] = (2 * p + rows * positions * s.L * 2 * s.kv * s.hd * 2) / GIB
    return out
