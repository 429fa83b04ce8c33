"""Share a trained student: its ``model/`` folder plus a model card that says how it was made.

``push_to_hub(run_dir, "you/student-opd")`` uploads ``<run_dir>/model`` (``save_pretrained`` output, so
``AutoModelForCausalLM.from_pretrained("you/student-opd")`` loads it), the run's ``config.json`` as
``gopd_lab_config.json``, its ``eval.jsonl`` and a ``README.md`` model card (teacher, λ, reference, method,
steps, accuracy before and after) through ``huggingface_hub``'s ``ModelCard`` and ``HfApi.upload_folder``.
``local_dir=...`` writes the same files to a folder instead and touches no network.

A LoRA run (``lora_r > 0``) saves only the adapter in ``model/``; push merges it into the run's base student
(peft's ``merge_and_unload``) and uploads the full model, so the card's ``from_pretrained`` snippet holds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gopd_lab.config import ConfigError
from gopd_lab.runio import read_jsonl

CARD_FILE = "README.md"


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _accuracy_table(evals: list[dict], steps: int, k: int) -> str:
    """Markdown table: one row per domain, greedy / mean@k / pass@k at step 0 and at the last step."""
    if not evals:
        return "No evaluation was run (the run had no tasks)."
    last = max(r.get("step", 0) for r in evals)
    before = {r.get("domain", "all"): r for r in evals if r.get("step") == 0}
    after = {r.get("domain", "all"): r for r in evals if r.get("step") == last}
    metrics = [m for m in ("greedy_acc", "mean_acc", "pass_acc") if any(m in r for r in after.values())]
    names = {"greedy_acc": "greedy", "mean_acc": f"mean@{k}", "pass_acc": f"pass@{k}"}
    head = ["domain", "test prompts"] + [f"{names[m]} step 0" for m in metrics]
    head += [f"{names[m]} step {last}" for m in metrics]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for domain, r in after.items():
        b = before.get(domain, {})
        cells = [domain, str(r.get("n", ""))]
        cells += [f"{b[m]:.3f}" if isinstance(b.get(m), (int, float)) else "–" for m in metrics]
        cells += [f"{r[m]:.3f}" if isinstance(r.get(m), (int, float)) else "–" for m in metrics]
        rows.append("| " + " | ".join(cells) + " |")
    note = "" if last == steps else f"\n\n(The last evaluation is at step {last} of {steps}.)"
    return "\n".join(rows) + note


def model_card(run_dir: str | Path, repo_id: str | None = None):
    """The ``huggingface_hub.ModelCard`` of a finished run: YAML metadata plus how the student was trained."""
    from huggingface_hub import ModelCard, ModelCardData

    run = Path(run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{run} has no config.json: give the out_dir of a gopd_lab run")
    cfg = json.loads(cfg_path.read_text())
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    evals = read_jsonl(run / "eval.jsonl")
    steps = summary.get("steps", cfg.get("steps"))
    student = str(cfg.get("student", ""))
    is_hub_id = student.count("/") == 1 and not Path(student).exists() and not student.startswith("zoo:")
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gopd-lab", "on-policy-distillation", cfg.get("method", "gopd")],
        base_model=student if is_hub_id else None,
    )
    recipe = [
        ("method", cfg.get("method")),
        ("student (start)", student),
        ("teacher", cfg.get("teacher")),
        ("λ (`lam`)", cfg.get("lam")),
        ("reference", cfg.get("reference")),
    ]
    if cfg.get("lam_mode", "fixed") != "fixed":  # λ chosen by a lineage rule (config.json always has the field)
        recipe.append(("`lam_mode`", cfg["lam_mode"]))
    recipe += [
        ("estimator", cfg.get("estimator")),
        ("tasks", cfg.get("tasks") or cfg.get("prompts")),
        ("steps", steps),
        ("prompts per step (global)", cfg.get("batch_size")),
        ("samples per prompt", cfg.get("samples_per_prompt")),
        ("learning rate", cfg.get("lr")),
        ("seed", cfg.get("seed")),
    ]
    title = repo_id or run.name
    body = "\n".join(
        [
            f"# {title}",
            "",
            "A student distilled on-policy with gopd_lab (G-OPD): the student samples, the "
            "teacher scores every token, and the reward `log π_T − log π_R` is scaled by λ "
            "(λ = 1 is OPD, λ > 1 ExOPD).",
            "",
            "## How it was trained",
            "",
            "| | |",
            "|---|---|",
            *[f"| {k} | `{_fmt(v)}` |" for k, v in recipe if v not in (None, "")],
            "",
            "The whole configuration is in `gopd_lab_config.json`, every evaluation in `eval.jsonl`.",
            "",
            "## Accuracy on the tasks' test splits",
            "",
            _accuracy_table(evals, steps, cfg.get("eval_k", "k")),
            "",
            f"`greedy`: argmax decoding; `mean@k`: mean accuracy over k = {cfg.get('eval_k')} samples per prompt at "
            f"temperature {cfg.get('temperature')}; `pass@k`: the unbiased estimate of the chance that one of k "
            "samples is correct (Chen et al., 2021).",
            "",
            "## Use",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{title}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{title}")',
            "```",
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def stage(run_dir: str | Path, out: str | Path, repo_id: str | None = None) -> Path:
    """Write what :func:`push_to_hub` uploads into the folder ``out``: ``model/``'s files at the top level,
    ``gopd_lab_config.json``, ``eval.jsonl`` and the ``README.md`` card."""
    run, out = Path(run_dir), Path(out)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir {run} is a file: give the out_dir of a finished gopd_lab run (a folder)")
    model = run / "model"
    adapter = (model / "adapter_config.json").is_file()
    if not (model / "config.json").is_file() and not adapter:
        raise ConfigError(
            f"{model} holds no saved model: push needs a finished run of a Hugging Face student "
            "(train writes <out_dir>/model with save_pretrained at the end)"
        )
    card = model_card(run, repo_id)
    _check_target(out)
    new = out.with_name(f".{out.name}.staging")  # written whole, then put in place: no stale file can stay
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        if adapter:
            merge_adapter(run, new)
        else:
            for f in sorted(model.iterdir()):
                if f.is_file():
                    shutil.copy2(f, new / f.name)
        shutil.copy2(run / "config.json", new / "gopd_lab_config.json")
        if (run / "eval.jsonl").is_file():
            shutil.copy2(run / "eval.jsonl", new / "eval.jsonl")
        card.save(new / CARD_FILE)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if out.exists():  # an earlier push's folder (checked above): replaced whole
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)
    return out


def _check_target(out: Path) -> None:
    """``local_dir`` must be new, empty, or an earlier push's folder (it holds ``gopd_lab_config.json``), which
    is replaced whole: copying over other files would keep stale ones (an old tokenizer's files changed EOS)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"local_dir {out} is a file; give a folder (new or empty) to write the model into")
    try:
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as err:
        raise ConfigError(f"cannot read local_dir {out} ({err.strerror}); give another folder") from None
    if present and "gopd_lab_config.json" not in present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise ConfigError(
            f"local_dir {out} is not empty ({shown}) and is not an earlier push's folder; its files would mix with "
            "the model's (a stale tokenizer file changes the model's tokens): give a new or empty folder"
        )
    if not os.access(out if out.is_dir() else next(p for p in out.parents if p.exists()), os.W_OK):
        raise ConfigError(f"cannot write local_dir {out} (permission denied); give a folder you can write")


def merge_adapter(run_dir: str | Path, out: str | Path) -> None:
    """Write the full student of a LoRA run to ``out``: the run's base ``student`` with the adapter of
    ``<run_dir>/model`` merged in (``merge_and_unload``), and the tokenizer, as ``save_pretrained`` files."""
    import torch

    from gopd_lab.lm.models import load_model

    run, out = Path(run_dir), Path(out)
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigError(
            f"{run / 'model'} holds a LoRA adapter; merging it into a full model for the push needs peft: "
            "pip install 'gopd-lab[lora]'"
        ) from None
    cfg = json.loads((run / "config.json").read_text())
    base = load_model(
        cfg["student"],
        role="student (the LoRA adapter's base)",
        device=torch.device("cpu"),
        dtype=torch.float32,
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
    )
    merged = PeftModel.from_pretrained(base, str(run / "model")).merge_and_unload()
    merged.save_pretrained(out)
    for f in sorted((run / "model").iterdir()):  # the tokenizer's files; not the adapter's
        if f.is_file() and not f.name.startswith("adapter_") and f.name != "README.md":
            shutil.copy2(f, out / f.name)


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    local_dir: str | Path | None = None,
    commit_message: str = "Upload student trained with gopd_lab",
) -> str:
    """Upload a run's student and model card to the Hub repo ``repo_id`` (created if missing) and return its
    URL; with ``local_dir`` only write the files there (see :func:`stage`) and return that path."""
    if local_dir is not None:
        return str(stage(run_dir, local_dir, repo_id))
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        stage(run_dir, tmp, repo_id)
        api.upload_folder(
            folder_path=tmp,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            delete_patterns="*",  # files an earlier push left in the repo (a stale tokenizer file) go in this commit
        )
    return str(url)
