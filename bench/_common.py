"""Shared helpers of the bench scripts: the models and prompts of a setting, timing, allocation peaks, tables.

Not part of the package or the test suite. Times are wall-clock seconds on whatever machine runs them; the
scripts report min / median / max over repeats and never compare against fixed thresholds.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gopd_lab.lm.models import freeze, load_model, load_tokenizer  # noqa: E402
from gopd_lab.lm.rollout import Prompts, prompts_from_tasks  # noqa: E402
from gopd_lab.world.tiny import tiny_config, tiny_model  # noqa: E402
from gopd_lab.world.tokenizer import build_char_tokenizer  # noqa: E402

SMALL = dict(hidden=64, layers=2, heads=4, kv_heads=2)  # the zoo's student-base / teacher-add architecture


@dataclass
class World:
    """One benchmark setting: models on CPU in float32, the tokenizer, a pool of prompts."""

    name: str
    student: nn.Module
    teacher: nn.Module
    reference: nn.Module
    tokenizer: object
    prompts: Prompts
    vocab: int


def zoo_available(*specs: str) -> bool:
    """Every ``zoo:<name>`` in ``specs`` is in data/zoo's manifest (the zoo may be half built)."""
    path = ROOT / "data" / "zoo" / "manifest.json"
    if not path.exists():
        return False
    have = json.loads(path.read_text()).get("models", {})
    return all(s[4:] in have for s in specs if s.startswith("zoo:"))


def random_qwen2(
    vocab: int, *, seed: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, tokenizer=None
) -> nn.Module:
    """A random ``Qwen2ForCausalLM`` of any vocabulary (``tiny.tiny_config``); special ids from the char tokenizer."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(
        vocab,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        max_positions=256,
        tokenizer=tokenizer or build_char_tokenizer(),
    )
    return Qwen2ForCausalLM(cfg).eval()


def task_prompts(tokenizer, n: int) -> Prompts:
    """The first ``n`` train prompts of the embedded add/mul tasks (interleaved)."""
    from gopd_lab.tasks import load_tasks

    return prompts_from_tasks(load_tasks(["add", "mul"]), tokenizer, limit=(n + 1) // 2).select(range(n))


def random_prompts(vocab: int, n: int, length: int, seed: int = 0) -> Prompts:
    """``n`` prompts of ``length`` random token ids in ``[4, vocab)`` (ids beyond the tokenizer are fine)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, length), generator=g).tolist()
    return Prompts(ids, [""] * n, ["default"] * n)


def build_world(
    *,
    student: str = "",
    teacher: str = "",
    vocab: int = 0,
    hidden: int = 64,
    layers: int = 2,
    n_prompts: int = 64,
    prompt_len: int = 16,
) -> World:
    """Zoo / checkpoint models when ``student`` and ``teacher`` load, random models of ``vocab`` tokens when
    ``vocab`` > 0; a ``zoo:`` spec without a built zoo falls back to tiny random models of the zoo's shape."""
    tok = build_char_tokenizer()
    if vocab:
        s = random_qwen2(vocab, seed=0, hidden=hidden, layers=layers, tokenizer=tok)
        t = random_qwen2(vocab, seed=1, hidden=hidden, layers=layers, tokenizer=tok)
        name = f"random V={vocab} H={hidden} L={layers}"
        prompts = random_prompts(vocab, n_prompts, prompt_len)
    elif (student.startswith("zoo:") or teacher.startswith("zoo:")) and not zoo_available(student, teacher):
        s, t = tiny_model(seed=0, tokenizer=tok, **SMALL), tiny_model(seed=1, tokenizer=tok, **SMALL)
        name = f"tiny random (no data/zoo yet) V={len(tok)} H=64 L=2"
        prompts = task_prompts(tok, n_prompts)
        vocab = len(tok)
    else:
        cpu = torch.device("cpu")
        tok = load_tokenizer(student)
        s = load_model(student, role="student", device=cpu, dtype=torch.float32)
        t = load_model(teacher, role="teacher", device=cpu, dtype=torch.float32)
        name = f"{student} <- {teacher}"
        prompts = task_prompts(tok, n_prompts)
        vocab = int(s.get_output_embeddings().weight.shape[0])
    return World(name, s, freeze(t), freeze(copy.deepcopy(s)), tok, prompts, vocab)


# ---------------------------------------------------------------------------------------------- measuring
def stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def timed(fn: Callable, *args, **kwargs):
    """``(result, wall seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def measured(fn: Callable, *args, **kwargs):
    """``(result, wall seconds, CPU seconds of this process)``. On a shared machine the CPU time is the steadier
    of the two: it does not count the time other jobs hold the cores (with one torch thread, CPU ≈ wall when idle)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by another process (Linux ``/proc``; 10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_alloc(fn: Callable, *args, **kwargs):
    """``(result, bytes)``: the peak of live torch CPU allocations while ``fn`` runs, above its start.

    Replays every allocation and free that the profiler records (exact for tensors on the CPU allocator;
    ``tracemalloc`` does not see them and max-RSS only grows). On CUDA use ``torch.cuda.max_memory_allocated``.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args, **kwargs)
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and str(node.extra_fields.device) == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return out, peak


def max_rss_mb() -> float:
    """Process max resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
    if title:
        print(f"\n{title}")
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, width)))
    print("  ".join("-" * w for w in width))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, width)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
