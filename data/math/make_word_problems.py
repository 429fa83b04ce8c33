"""Write ``word_problems.jsonl``: grade-school arithmetic word problems made by this project (GSM8K layout).

Every row is ``{"question": ..., "answer": "<worked solution>\\n#### <final answer>"}``, the layout
``gopd_lab.tasks.load_math_jsonl`` reads (the last 10 % of rows by its split become the test set). The problems
are filled from the templates below with numbers drawn from a seeded generator, so the file is the same on
every machine: ``python data/math/make_word_problems.py`` rewrites it byte for byte. Each solution is computed
here, step by step, and checked to be a whole non-negative number.

Licence: the templates, this script and the file it writes are part of gopd_lab and released under the
repository's licence (Apache-2.0); no third-party text is used.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("word_problems.jsonl")
ROWS = 1000
SEED = 20261130

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam", "Mina"]
ITEMS = ["pencils", "apples", "stickers", "marbles", "books", "cards", "shells", "coins", "stamps", "cookies"]


def _shop(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    price, count, paid = r.randint(2, 15), r.randint(2, 9), 0
    cost = price * count
    paid = cost + r.randint(1, 50)
    q = f"{name} buys {count} {item} at {price} dollars each and pays with {paid} dollars. How much change does {name} get?"
    a = f"The {item} cost {count} * {price} = {cost} dollars.\nThe change is {paid} - {cost} = {paid - cost} dollars."
    return q, a, paid - cost


def _boxes(r: random.Random) -> tuple[str, str, int]:
    item = r.choice(ITEMS)
    per, boxes, extra = r.randint(3, 24), r.randint(2, 12), r.randint(0, 20)
    total = per * boxes + extra
    q = f"A box holds {per} {item}. There are {boxes} full boxes and {extra} loose {item}. How many {item} are there?"
    a = f"The boxes hold {boxes} * {per} = {per * boxes} {item}.\nWith the loose ones: {per * boxes} + {extra} = {total}."
    return q, a, total


def _share(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends, each, kept = r.randint(2, 9), r.randint(2, 15), r.randint(1, 30)
    total = friends * each + kept
    q = (
        f"{name} had {total} {item}, kept {kept} and shared the rest equally among {friends} friends. "
        f"How many {item} did each friend get?"
    )
    a = f"{name} shared {total} - {kept} = {total - kept} {item}.\nEach friend got {total - kept} / {friends} = {each}."
    return q, a, each


def _savings(r: random.Random) -> tuple[str, str, int]:
    name = r.choice(NAMES)
    start, weekly, weeks, spent = r.randint(0, 60), r.randint(3, 25), r.randint(2, 10), r.randint(1, 40)
    saved = start + weekly * weeks
    spent = min(spent, saved)
    q = (
        f"{name} has {start} dollars and saves {weekly} dollars every week for {weeks} weeks, then spends {spent} "
        f"dollars. How many dollars does {name} have now?"
    )
    a = (
        f"{name} saves {weekly} * {weeks} = {weekly * weeks} dollars.\nThat makes {start} + {weekly * weeks} = {saved}.\n"
        f"After spending: {saved} - {spent} = {saved - spent} dollars."
    )
    return q, a, saved - spent


def _rows_of_seats(r: random.Random) -> tuple[str, str, int]:
    rows, seats, empty = r.randint(3, 30), r.randint(4, 20), r.randint(0, 25)
    total = rows * seats
    empty = min(empty, total)
    q = f"A hall has {rows} rows of {seats} seats and {empty} seats are empty. How many people are seated?"
    a = f"The hall has {rows} * {seats} = {total} seats.\nSeated: {total} - {empty} = {total - empty}."
    return q, a, total - empty


def _trip(r: random.Random) -> tuple[str, str, int]:
    name = r.choice(NAMES)
    speed, hours, back = r.randint(20, 90), r.randint(2, 8), r.randint(5, 60)
    there = speed * hours
    q = (
        f"{name} drives {hours} hours at {speed} km per hour, then drives {back} km back. How many km is {name} "
        f"from the start?"
    )
    a = f"{name} drives {speed} * {hours} = {there} km.\nFrom the start: {there} - {back} = {there - back} km."
    return q, a, there - back


TEMPLATES = [_shop, _boxes, _share, _savings, _rows_of_seats, _trip]


def make_rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    """``n`` distinct problems, templates taken in turn, numbers from ``random.Random(seed)``."""
    r, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        question, solution, final = TEMPLATES[len(rows) % len(TEMPLATES)](r)
        if question in seen:
            continue
        assert isinstance(final, int) and final >= 0, (question, final)
        seen.add(question)
        rows.append({"question": question, "answer": f"{solution}\n#### {final}"})
    return rows


def main() -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in make_rows())
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, prefix=f".{OUT.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, OUT)
    print(f"wrote {OUT} ({ROWS} rows)")


if __name__ == "__main__":
    main()
