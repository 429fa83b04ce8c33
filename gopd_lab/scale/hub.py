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

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gopd_lab.config import ConfigError
from gopd_lab.runio import read_jsonl

CARD_FILE = "README.md"
PROJECT_LICENSE = "apache-2.0"
"""gopd-lab's license (pyproject.toml), the license of the zoo's models it built."""


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


FRAMEWORKS = ("gopd-lab", "torch", "transformers", "huggingface_hub", "datasets", "accelerate", "peft")
_METRICS = {"greedy_acc": "greedy", "mean_acc": "mean@{k}", "pass_acc": "pass@{k}"}


def _zoo_base(student: str) -> dict | None:
    """``{"zoo": name, "manifest_sha256": ...}`` of a ``zoo:<name>`` student: the sha256 of the canonical JSON of
    its manifest entry (files, hashes, recipe), so the card names the exact weights it started from."""
    if not student.startswith("zoo:"):
        return None
    from gopd_lab.world.zoo import read_manifest

    entry = read_manifest()["models"].get(student[4:])
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest() if entry else None
    return {"zoo": student[4:], "manifest_sha256": digest}


def _hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repo id (``owner/name``, not a local path or a zoo name)."""
    return name.count("/") == 1 and not Path(name).exists() and not name.startswith(("zoo:", ".", "/", "~"))


def _task_datasets(tasks) -> dict[str, str]:
    """``{domain: Hub dataset id}`` of the run's ``hf:`` tasks on the Hub (``hf:openai/gsm8k:main?...`` →
    ``{"gsm8k": "openai/gsm8k"}``); local datasets and embedded tasks have no id."""
    from gopd_lab.tasks.hfdata import parse_hf_name

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks or [])
    specs = [parse_hf_name(name) for name in names if name.startswith("hf:")]
    return {spec.domain: spec.path for spec in specs if _hub_id(spec.path)}


def _inherited_license(student: str) -> str | None:
    """The license of the student the run started from: a local checkpoint's own card, or this project's (the
    zoo's models are built by it); ``None`` when unknown (a Hub id: its license is on its own card)."""
    from huggingface_hub import ModelCard

    if student.startswith("zoo:"):
        return PROJECT_LICENSE
    card = Path(student) / CARD_FILE
    if card.is_file():
        return ModelCard.load(card).data.license
    return None


def framework_versions(cfg: dict) -> dict[str, str]:
    """The versions the run recorded in ``config.json`` (``versions``), else those installed now."""
    recorded = cfg.get("versions")
    if isinstance(recorded, dict) and recorded:
        return {str(k): str(v) for k, v in recorded.items()}
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in FRAMEWORKS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def eval_results(evals: list[dict], cfg: dict, task_type: str = "text-generation") -> list:
    """``huggingface_hub.EvalResult`` s of a run's ``eval.jsonl``: per domain and metric (greedy, mean@k, pass@k)
    at step 0 (before) and at the last evaluated step (after), on the domain's test split."""
    from huggingface_hub import EvalResult

    if not evals:
        return []
    k = cfg.get("eval_k", "k")
    last = max(r.get("step", 0) for r in evals)
    datasets = _task_datasets(cfg.get("tasks"))
    results = []
    for step, when in ((0, "before"), (last, "after")) if last else ((0, "before"),):
        for r in (r for r in evals if r.get("step") == step):
            domain = str(r.get("domain", "all"))
            for metric, label in _METRICS.items():
                if not isinstance(r.get(metric), (int, float)):
                    continue
                name = label.format(k=k)
                results.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=datasets.get(domain, domain),
                        dataset_name=domain,
                        dataset_split="test",
                        metric_type="accuracy",
                        metric_value=round(float(r[metric]), 4),
                        metric_name=f"{name} accuracy, step {step} ({when})",
                        metric_config=name,
                        metric_args={"step": step, "n": r.get("n"), "temperature": cfg.get("temperature")},
                    )
                )
    return results


def card_data(run_dir: str | Path, repo_id: str | None = None, license: str | None = None):
    """The card's metadata as ``huggingface_hub.ModelCardData``: library, pipeline, tags, ``base_model`` (a Hub
    student), ``datasets`` (the run's Hub datasets), ``license``, ``model-index`` results from ``eval.jsonl`` and,
    for a zoo student, ``gopd_lab_base`` (its zoo name and manifest hash)."""
    from huggingface_hub import ModelCardData

    run = Path(run_dir)
    cfg = _read_config(run)
    student = str(cfg.get("student", ""))
    zoo = _zoo_base(student)
    extra = {"gopd_lab_base": zoo} if zoo else {}
    return ModelCardData(
        model_name=repo_id or run.name,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gopd-lab", "on-policy-distillation", cfg.get("method", "gopd")],
        base_model=student if _hub_id(student) else None,
        datasets=list(dict.fromkeys(_task_datasets(cfg.get("tasks")).values())) or None,
        license=license or _inherited_license(student),
        eval_results=eval_results(read_jsonl(run / "eval.jsonl"), cfg) or None,
        **extra,
    )


def _read_config(run: Path) -> dict:
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{run} has no config.json: give the out_dir of a gopd_lab run")
    return json.loads(cfg_path.read_text())


def model_card(run_dir: str | Path, repo_id: str | None = None, license: str | None = None):
    """The ``huggingface_hub.ModelCard`` of a finished run: :func:`card_data`'s YAML metadata (which the Hub reads:
    base model, datasets, license, evaluation results) plus how the student was trained."""
    from huggingface_hub import ModelCard

    run = Path(run_dir)
    cfg = _read_config(run)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    evals = read_jsonl(run / "eval.jsonl")
    steps = summary.get("steps", cfg.get("steps"))
    student = str(cfg.get("student", ""))
    data = card_data(run, repo_id, license)
    zoo = _zoo_base(student)
    recipe = [
        ("method", cfg.get("method")),
        ("student (start)", student),
        ("zoo manifest sha256", zoo and zoo["manifest_sha256"]),
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
            "",
            "## Framework versions",
            "",
            *[f"- {name} {v}" for name, v in framework_versions(cfg).items()],
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
