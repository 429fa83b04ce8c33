"""The one rule the GPU presets (``configs/gpu-*.yaml``) state their expected memory by: an estimate from the model
dimensions written in each preset, not a measurement (``bench/gpu_smoke.py`` measures). GiB = 2**30 bytes.

- ``static``: the student's float32 weights, gradients and AdamW moments (16 P), autocast's bf16 weight copies (2 P),
  the reference = the student's initial weights, kept in float32 (4 P), the teacher in bf16 (2 P_T).
- ``rollout``: the key-value cache, rows × positions × L × 2 (k, v) × kv heads × head dim × 2 B.
- ``scoring``: the teacher runs over every row of the batch in one pass (not micro-batched): one layer's
  intermediates, (3 I_T + 4 H_T) × 2 B per token, plus one chunk of float32 logits (``CUDA_CHUNK_BYTES``).
- ``update``, per micro-batch of ``n`` tokens under gradient checkpointing: the float32 layer inputs kept for
  backward (n × H × 4 B × L), one layer recomputed ((8 H + 3 I) × 2 B per token), one chunk of logits, and the
  LM head's bf16 copy (2 V H) plus the float32 weight gradient of the fused log-prob pass (4 V H).
- ``peak`` = static + the largest of the three phases.

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


def estimate(student: Dims, teacher: Dims, *, rows: int, positions: int, micro_rows: int) -> dict[str, float]:
    """GiB per part (see the module doc) for ``rows`` sequences of ``positions`` tokens, ``micro_rows`` per
    micro-batch in the update."""
    p, pt = student.params, teacher.params
    tokens, micro = rows * positions, micro_rows * positions
    s, t = student, teacher
    out = {
        "static": (16 * p + 2 * p + 4 * p + 2 * pt) / GIB,
        "rollout": rows * positions * s.L * 2 * s.kv * s.hd * 2 / GIB,
        "scoring": (tokens * (3 * t.inter + 4 * t.H) * 2 + CUDA_CHUNK_BYTES) / GIB,
        "update": (micro * s.H * 4 * s.L + micro * (8 * s.H + 3 * s.inter) * 2 + CUDA_CHUNK_BYTES + 6 * s.V * s.H)
        / GIB,
    }
    out["peak"] = out["static"] + max(out["rollout"], out["scoring"], out["update"])
    return out
