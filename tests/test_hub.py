"""push_to_hub: the student's files and a model card saying how it was made, written to a folder (no network)."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from gopd_lab.cli import main
from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.loop.train import train
from gopd_lab.scale.hub import push_to_hub


@pytest.fixture(scope="module")
def run_dir(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "run"
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        reference=tiny_dirs["reference"],
        lam=1.25,
        tasks="add",
        steps=2,
        batch_size=2,
        max_new_tokens=3,
        eval_k=2,
        eval_limit=4,
        log_samples=0,
        out_dir=str(out),
    )
    train(cfg, progress=False)
    return out


def test_card_and_files_written_to_a_folder_load_like_any_checkpoint(run_dir, tiny_dirs, tmp_path):
    where = push_to_hub(run_dir, "someone/student-exopd", local_dir=tmp_path / "card")
    folder = tmp_path / "card"
    assert where == str(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "gopd_lab_config.json", "eval.jsonl"} <= names
    assert "tokenizer.json" in names
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and "gopd-lab" in card.data.tags
    text = card.text
    assert tiny_dirs["teacher"] in text and tiny_dirs["reference"] in text and "| λ (`lam`) | `1.25` |" in text
    assert "| steps | `2` |" in text and "| method | `gopd` |" in text and "lam_mode" not in text
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    before, after = evals[0], evals[-1]
    row = (
        f"| add | 4 | {before['greedy_acc']:.3f} | {before['mean_acc']:.3f} | {before['pass_acc']:.3f} "
        f"| {after['greedy_acc']:.3f} | {after['mean_acc']:.3f} | {after['pass_acc']:.3f} |"
    )
    assert row in text
    model = AutoModelForCausalLM.from_pretrained(folder)
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    for (name, a), (_, b) in zip(model.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(a, b), name


def test_lam_mode_appears_when_the_run_has_it(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("summary.json", "eval.jsonl"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    cfg = json.loads((run_dir / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "lam_mode": "reopd"}))
    (run / "model").symlink_to(run_dir / "model")
    push_to_hub(run, "someone/x", local_dir=tmp_path / "card")
    assert "| `lam_mode` | `reopd` |" in (tmp_path / "card" / "README.md").read_text()


def test_upload_goes_through_hf_api_upload_folder(run_dir, monkeypatch):
    """The Hub path with HfApi replaced by a recorder: the repo is created, then the staged folder uploaded."""
    calls = []

    class Recorder:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"], kw["exist_ok"]))
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kw):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload_folder", repo_id, "README.md" in files and "model.safetensors" in files))

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    url = push_to_hub(run_dir, "someone/student", private=True, token="t")
    assert url == "https://hub.example/someone/student"
    assert calls == [
        ("init", "t"),
        ("create_repo", "someone/student", True, True),
        ("upload_folder", "someone/student", True),
    ]


def test_cli_push_to_a_folder_and_a_clear_error_without_a_model(run_dir, tmp_path, capsys):
    assert main(["push", str(run_dir), "someone/s", "--local-dir", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "README.md").is_file() and "wrote" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no saved model"):
        push_to_hub(empty, "someone/s", local_dir=tmp_path / "d")
    assert main(["push", str(tmp_path / "nothing"), "someone/s", "--local-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "holds no saved model" in err and err.count("\n") == 1


def _rewritten(run_dir, tmp_path, **cfg_changes):
    """A copy of the run whose config.json has ``cfg_changes`` (the model folder linked, not copied)."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("summary.json", "eval.jsonl"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    cfg = json.loads((run_dir / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, **cfg_changes}))
    (run / "model").symlink_to(run_dir / "model")
    return run


def test_the_card_metadata_parses_back_with_the_eval_results_before_and_after(run_dir, tmp_path):
    push_to_hub(run_dir, "someone/student-exopd", local_dir=tmp_path / "card")
    card = ModelCard.load(tmp_path / "card" / "README.md")
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in evals)
    got = {(r.metric_config, r.metric_args["step"]): r.metric_value for r in card.data.eval_results}
    for step in (0, last):
        row = next(r for r in evals if r["step"] == step)
        for metric, name in (("greedy_acc", "greedy"), ("mean_acc", "mean@2"), ("pass_acc", "pass@2")):
            assert got[(name, step)] == round(row[metric], 4)
    assert len(got) == 6 and card.data.model_name == "someone/student-exopd"
    assert {r.dataset_name for r in card.data.eval_results} == {"add"}
    assert all(r.task_type == "text-generation" and r.dataset_split == "test" for r in card.data.eval_results)
    assert card.data.base_model is None  # a local directory is not a Hub id
    assert (
        f"- torch {torch.__version__}" in card.text and f"- huggingface_hub {huggingface_hub.__version__}" in card.text
    )


def test_a_zoo_student_cards_its_zoo_name_and_manifest_hash_and_hub_datasets(run_dir, tmp_path):
    import hashlib

    from gopd_lab.world.zoo import read_manifest

    gsm8k = "hf:openai/gsm8k:main?prompt_field=question&verifier=math"
    run = _rewritten(run_dir, tmp_path, student="zoo:student-base", tasks=f"{gsm8k},add")
    push_to_hub(run, "someone/zoo-student", local_dir=tmp_path / "card")
    card = ModelCard.load(tmp_path / "card" / "README.md")
    entry = read_manifest()["models"]["student-base"]
    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    assert card.data.to_dict()["gopd_lab_base"] == {"zoo": "student-base", "manifest_sha256": digest}
    assert card.data.base_model is None and card.data.license == "apache-2.0"
    assert card.data.datasets == ["openai/gsm8k"] and digest in card.text


def test_a_hub_student_is_the_base_model_and_a_given_license_wins(run_dir, tmp_path):
    from gopd_lab.scale.hub import model_card

    run = _rewritten(run_dir, tmp_path, student="Qwen/Qwen3-0.6B", versions={"torch": "9.9.9"})
    card = model_card(run, "someone/q", license="mit")
    assert card.data.base_model == "Qwen/Qwen3-0.6B" and card.data.license == "mit"
    assert "- torch 9.9.9" in card.text  # the versions the run recorded, when it did
    parsed = ModelCard(str(card))
    assert parsed.data.base_model == "Qwen/Qwen3-0.6B" and len(parsed.data.eval_results) == 6
