"""README.md's speed and memory tables, rendered from the committed bench JSON in bench/results/.

    python bench/tables.py           # rewrite the tables between `<!-- bench:NAME -->` markers (README.md, bench/README.md)
    python bench/tables.py --check   # exit 1 if either differs from what the JSON gives (tests run this rule)

Every number comes from the JSON file named beside it; the labels (date, zoo world) are what git history says
about the run that wrote each file. Memory rows state the chunk size they were measured at, resolved from the
JSON (a bare "default" row takes the default the same file's rows record). Reads JSON only: no torch import.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BENCH_README = ROOT / "bench" / "README.md"

SETTINGS = ("zoo", "v151936_b4", "v151936_b32")
HEADERS = ("zoo models (V = 104)", "V = 151,936, batch 4", "V = 151,936, batch 32")
# step.py: one file per setting (all measured 2026-11-30, zoo world v1, `sampled`, batch 32 unless stated)
STEP_FILES = {
    "zoo": "step_zoo_rerun.json",
    "v151936_b4": "step_v151936_b4_rerun.json",
    "v151936_b32": "step_v151936_b32_rerun.json",
}
TRL_FILE = "vs_trl_v2.json"  # 2026-11-30, zoo world v2, the latest committed vs_trl run
MEMORY_FILES = ("scoring_memory_v151936_b32.json", "step_v151936_b32.json")  # 2026-11-30 and 2026-11-22
MARKER = re.compile(r"(<!-- bench:(\w+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.S)


def load(results: Path = RESULTS) -> dict[str, dict]:
    names = {*STEP_FILES.values(), TRL_FILE, *MEMORY_FILES}
    return {name: json.loads((results / name).read_text()) for name in sorted(names)}


def _ratio(median: float, low: float, high: float) -> str:
    return f"{median:.2f} ({low:.2f}–{high:.2f})"


def _step_row(data: dict, setting: str) -> dict:
    rows = [r for r in data[STEP_FILES[setting]]["rows"] if r["stage"].startswith("step")]
    if len(rows) != 1:
        raise ValueError(f"{STEP_FILES[setting]}: expected one 'step' row, found {len(rows)}")
    return rows[0]


def speed_table(data: dict[str, dict]) -> str:
    step_ratio, step_cpu = [], []
    for s in SETTINGS:
        row = _step_row(data, s)
        low, high = (float(x) for x in row["ratio_cpu_min_max"].split("-"))
        step_ratio.append(_ratio(row["ratio_cpu"], low, high))
        step_cpu.append(f"{row['cpu_median_s']:.3g} s ({row['tok/s']:,.0f} tok/s)")
    trl = data[TRL_FILE]["settings"]
    trl_ratio, trl_len = [], []
    for s in SETTINGS:
        r = trl[s]["ratio_trl_over_gopd"]["step_cpu_s"]
        trl_ratio.append(_ratio(r["median"], r["min"], r["max"]))
        lens = {row["trainer"]: row["mean_completion_len"] for row in trl[s]["rows"]}
        trl_len.append(f"{lens['gopd_lab']:.1f} / {lens['trl']:.1f}")
    step_src = ", ".join(f"`{STEP_FILES[s]}`" for s in SETTINGS)
    lines = [
        "| | " + " | ".join(HEADERS) + " |",
        "|---|---|---|---|",
        "| step / naive baseline (bare `generate` + forwards + CE backward; `sampled`; zoo world v1; "
        f"{step_src}) | " + " | ".join(step_ratio) + " |",
        "| gopd_lab step, CPU s (completion tokens / CPU s), same files | " + " | ".join(step_cpu) + " |",
        f"| TRL `DistillationTrainer` step / gopd_lab step (same objective, `full`, λ = 1; zoo world v2; `{TRL_FILE}`)"
        " ⚠ | " + " | ".join(trl_ratio) + " |",
        "| mean completion tokens, gopd_lab / TRL, same file | " + " | ".join(trl_len) + " |",
        "",
        "CPU only: a shared 2-core machine, 1 torch thread a side; ratios of CPU time, median (min–max) over "
        "repeats, both sides in the same command. Measured 2026-11-30 and not re-measured since; the step rows "
        "predate the 32 MiB CPU scoring chunks (they ran at 8 MiB), the TRL row ran with them. ⚠ A later side-by-side run through "
        "`train()` (not committed here) found lower TRL / gopd_lab ratios than this row; treat it as unconfirmed "
        "until `bench/vs_trl.py` is re-run and its JSON committed.",
    ]
    return "\n".join(lines) + "\n"


def _chunk(value, rows: list[dict], vocab: int) -> str:
    """A chunk cell in MiB of float32 logits: positions → MiB; "default (8 MiB)" and a bare "default" (taken from
    the same file's rows that record it) → the default in force when the file was written."""
    if value == "-":
        return "–"
    if isinstance(value, int):
        return f"{value} positions ({value * vocab * 4 / 2**20:.1f} MiB)"
    found = {m.group(1) for r in rows if (m := re.fullmatch(r"default \((\d+) MiB\)", str(r["chunk_tokens"])))}
    if len(found) != 1:
        raise ValueError(f"chunk {value!r}: the file records no single default chunk size ({sorted(found)})")
    return f"{found.pop()} MiB (the default then)"


def current_chunk_mib(source: Path = ROOT / "gopd_lab" / "lm" / "logprobs.py") -> int:
    """The CPU default chunk of today's code, read from its source (importing it would import torch)."""
    m = re.search(r"^CHUNK_BYTES = (\d+) \* 2\*\*20$", source.read_text(), re.M)
    if m is None:
        raise ValueError(f"{source}: no `CHUNK_BYTES = N * 2**20` line; update bench/tables.py")
    return int(m.group(1))


def memory_table(data: dict[str, dict]) -> str:
    lines = [
        "| method (768 completion positions, V = 151,936, CPU allocator) | estimator | chunk | peak MB | vs naive "
        "| CPU s | JSON |",
        "|---|---|---|---|---|---|---|",
    ]
    first, second = (data[name] for name in MEMORY_FILES)
    entries = [(MEMORY_FILES[0], r, first) for r in first["scoring_memory"]["rows"]]
    # step_v151936_b32.json adds the explicit chunk sizes (its default-chunk rows repeat the first file's)
    entries += [
        (MEMORY_FILES[1], r, second)
        for r in second["scoring_memory"]["rows"]
        if isinstance(r["chunk_tokens"], int) and r["chunk_tokens"] > 0
    ]
    for name, r, d in entries:
        rows, vocab = d["scoring_memory"]["rows"], d["scoring_memory"]["vocab"]
        estimator = r.get("estimator", f"{d['args']['estimator']} (lam=1)")
        estimator = "–" if estimator == "-" else estimator
        cpu = f"{r['cpu_median_s']:.2f}" if "cpu_median_s" in r else "–"
        lines.append(
            f"| {r['method']} | {estimator} | {_chunk(r['chunk_tokens'], rows, vocab)} | {r['peak_MB']:.1f} "
            f"| {r['vs_naive']:.3f} | {cpu} | `{name}` |"
        )
    now, vocab = current_chunk_mib(), first["scoring_memory"]["vocab"]
    lines += [
        "",
        "CPU only. Peak of live torch allocations while the method runs, against the naive "
        f"`log_softmax(logits).gather` on the same positions. The CPU default chunk is now {now} MiB of float32 "
        f"logits (`gopd_lab/lm/logprobs.py`, ≈ {now * 2**20 // (vocab * 4)} positions at this V); these rows were "
        f"measured at the chunk each states and none at {now} MiB. A larger chunk gives a larger peak (the 16- and "
        "64-position rows), so today's default most likely peaks above the 8 MiB rows: do not quote those as current.",
    ]
    return "\n".join(lines) + "\n"


def blocks(data: dict[str, dict]) -> dict[str, str]:
    return {"speed": speed_table(data), "memory": memory_table(data)}


# the blocks each file must hold (bench/README.md repeats the memory table beside its per-stage tables)
TARGETS = {README: ("speed", "memory"), BENCH_README: ("memory",)}


def fill(text: str, tables: dict[str, str], required: tuple[str, ...] = ("speed", "memory")) -> str:
    """``text`` with every `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` block holding ``tables[NAME]``; a block
    named in ``required`` that ``text`` lacks is an error."""
    seen = set()

    def sub(m: re.Match) -> str:
        seen.add(m.group(2))
        return m.group(1) + tables[m.group(2)] + m.group(4)

    out = MARKER.sub(sub, text)
    if missing := set(required) - seen:
        raise KeyError(f"no <!-- bench:NAME --> block for {sorted(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a file differs from the committed JSON")
    args = p.parse_args(argv)
    tables = blocks(load())
    stale = []
    for path, required in TARGETS.items():
        text = path.read_text()
        new = fill(text, tables, required)
        if new == text:
            continue
        stale.append(path)
        if not args.check:
            sys.path.insert(0, str(ROOT))
            from gopd_lab.runio import atomic_write_text

            atomic_write_text(path, new)
    names = ", ".join(p.name if p.parent == ROOT else str(p.relative_to(p.parents[1])) for p in stale) or "nothing"
    if args.check:
        if stale:
            print(f"bench tables differ from bench/results/ in {names}: run `python bench/tables.py`", file=sys.stderr)
            return 1
        print("README.md and bench/README.md: bench tables match bench/results/")
        return 0
    print(f"bench tables rewritten from bench/results/: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
