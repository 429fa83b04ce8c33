"""Credit assignment on the chain base's wrong test completions: OPD (λ = 1), ExOPD (λ = 2) and GRPO.

    python sweeps/chain_credit.py [--k 4] [--limit 0] [--out results/chain]

Samples ``k`` completions of every chain test prompt from ``zoo:chain-base`` (seed 0), scores them with
``zoo:chain-teacher`` and writes ``credit.csv`` (one row per wrong completion and method: its share of negative
advantage on the first wrong step ± 1 token, and on the first wrong token ± 1) and ``credit.json`` (per method
and window: n, mean share, 95 % bootstrap interval, the share a uniform spread would give).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gopd_lab.experiments import credit
from gopd_lab.runio import atomic_write_json, atomic_write_text
from gopd_lab.tasks import get_task
from gopd_lab.world.tokenizer import build_char_tokenizer
from gopd_lab.world.zoo import model_path


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--limit", type=int, default=0, help="test prompts (0: all)")
    p.add_argument("--base", default="chain-base")
    p.add_argument("--teacher", default="chain-teacher")
    p.add_argument("--out", type=Path, default=Path("results/chain"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    def load(name):
        return AutoModelForCausalLM.from_pretrained(model_path(name), dtype=torch.float32).eval()

    samples = credit.credit_samples(
        load(args.base), load(args.teacher), build_char_tokenizer(), get_task("chain"), k=args.k, limit=args.limit
    )
    tables = {kind: credit.shares(samples, kind) for kind in ("step", "token")}
    rows = []
    for kind, table in tables.items():
        table.insert(0, "window_kind", kind)
        rows.append(table)
    import pandas as pd

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "credit.csv", pd.concat(rows).to_csv(index=False))
    summary = {
        "base": args.base,
        "teacher": args.teacher,
        "k": args.k,
        "test_prompts": len(samples) // args.k,
        "completions": len(samples),
        "wrong": sum(not s.correct for s in samples),
        "seed": 0,
        "windows": {kind: credit.summarise(t).to_dict("records") for kind, t in tables.items()},
    }
    atomic_write_json(args.out / "credit.json", summary)
    print(summary)
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
