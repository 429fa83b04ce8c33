"""The target's headroom of every zoo teacher: accuracy of the G-OPD target π_R^(1−λ)·π_T^λ against λ.

    GOPD_LAB_WORLD=v2 python sweeps/headroom.py [--zoo DIR] [--lams 0,1,1.25,1.5,2,3] [--k 4] [--limit N] [--out results/headroom]

For each teacher of the zoo (a model with an ``init``), the reference is that base; the domains are those of
its recipe. One CSV per teacher (columns ``lam, domain, greedy_acc, mean_acc, n``) plus ``headroom.md`` (a
table: greedy / mean@k at each λ and the best λ's gain over λ = 1). Every λ uses evaluation seed 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gopd_lab.loop.headroom import headroom_curve
from gopd_lab.runio import atomic_write_text
from gopd_lab.tasks import load_tasks
from gopd_lab.world.tokenizer import build_char_tokenizer
from gopd_lab.world.zoo import read_manifest, zoo_dir


def curve_table(name: str, curve) -> list[str]:
    rows = []
    for domain, part in curve.groupby("domain", sort=False):
        cells = [f"{r.greedy_acc:.3f} / {r.mean_acc:.3f}" for r in part.itertuples()]
        at1 = part[part.lam == 1.0]
        gain = ""
        if len(at1):
            best = part.loc[part.greedy_acc.idxmax()]
            gain = f"λ={best.lam:g}: {100 * (best.greedy_acc - at1.greedy_acc.iloc[0]):+.1f}"
        rows.append(f"| {name} | {domain} | " + " | ".join(cells) + f" | {gain} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: the world's)")
    p.add_argument("--lams", default="0,1,1.25,1.5,2,3")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--only", default="", help="comma-separated teacher names")
    p.add_argument("--limit", type=int, default=0, help="test prompts per domain (0: all)")
    p.add_argument("--out", type=Path, default=Path("results/v2/headroom"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = args.zoo or zoo_dir()
    models = read_manifest(root)["models"]
    lams = [float(x) for x in args.lams.split(",")]
    tok = build_char_tokenizer()

    def load(name):
        return AutoModelForCausalLM.from_pretrained(root / name, dtype=torch.float32).eval()

    lines = [
        "| teacher | domain | " + " | ".join(f"λ={lam:g} greedy / mean@{args.k}" for lam in lams) + " | best − λ=1 |",
        "|" + "---|" * (len(lams) + 3),
    ]
    only = set(filter(None, args.only.split(",")))
    for name, entry in models.items():
        base = entry["recipe"].get("init")
        if not base or (only and name not in only):
            continue
        domains = sorted({t.split("-")[0] for t in entry["recipe"]["tasks"].split(",")})
        t0 = time.perf_counter()
        tokens = entry["recipe"].get("max_new_tokens", 6)  # the chain models' recipes carry theirs (42)
        curve = headroom_curve(
            load(name),
            load(base),
            tok,
            load_tasks(domains),
            lams=lams,
            k=args.k,
            max_new_tokens=tokens,
            limit=args.limit,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / f"{name}.csv", curve.to_csv(index=False))
        lines += curve_table(name, curve)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    atomic_write_text(args.out / "headroom.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
