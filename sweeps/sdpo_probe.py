"""Can a base read SDPO's feedback? Greedy accuracy on the test prompts in the self-teacher view against plain.

    GOPD_LAB_WORLD=v2 python sweeps/sdpo_probe.py data/zoo/v2 student-base student-base-sdpo

Every test prompt is re-written once (``tasks.arith.feedback_views`` at rate 1, seed 7: feedback on a wrong
attempt, a correct solution, or both, before the prompt); the answer is unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from gopd_lab.loop.evaluate import evaluate
from gopd_lab.tasks import get_task
from gopd_lab.tasks.arith import feedback_views
from gopd_lab.tasks.base import Task
from gopd_lab.world.tokenizer import build_char_tokenizer


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    root, tok = Path(argv[0]), build_char_tokenizer()
    for name in argv[1:]:
        model = AutoModelForCausalLM.from_pretrained(root / name, dtype=torch.float32).eval()
        for d in ("add", "mul"):
            task = get_task(d)
            views = feedback_views(Task(d, list(task.test), [], task.verifier, task.feedback_fn), 1.0, seed=7)
            viewed = Task(d, [], views, task.verifier, task.feedback_fn)
            plain = evaluate(model, tok, {d: task}, k=0, max_new_tokens=6).greedy_acc[0]
            view = evaluate(model, tok, {d: viewed}, k=0, max_new_tokens=6).greedy_acc[0]
            print(f"{name} {d}: plain {plain:.3f}  self-teacher view {view:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
