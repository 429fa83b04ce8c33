"""Peak memory and time of refusing a ``/score`` body with too many rows: decoding it first (``json.loads``, what
the server did before issue 22) against :func:`gopd_lab.scale.teacher_request.precheck_body` (now), on one body.

    .venv/bin/python bench/teacher_precheck.py [--rows 40000]

Memory is Python's allocations while each runs (``tracemalloc``, which also slows both down); the ratio is the point.
"""

import argparse
import json
import time
import tracemalloc

from gopd_lab.scale.teacher_request import BadRequest, precheck_body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--max-rows", type=int, default=4096)
    args = parser.parse_args()
    rows = [[1000 + i for i in range(60)]] * args.rows  # ids above 256: not Python's cached small ints
    body = json.dumps({k: rows for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}).encode()
    print(f"body {len(body) / 1e6:.1f} MB, {args.rows:,} rows, max_rows {args.max_rows:,}")
    runs = {
        "json.loads (before)": lambda: json.loads(body),
        "precheck_body (now)": lambda: precheck_body(body, max_rows=args.max_rows, max_context=None),
    }
    for name, run in runs.items():
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            run()
        except BadRequest:
            pass
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name:22s} peak {peak / 1e6:8.1f} MB  {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
