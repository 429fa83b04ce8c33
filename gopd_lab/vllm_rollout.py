"""Optional rollout backend on vLLM (``RunConfig.rollout_backend="vllm"``), for long completions on a GPU.

vLLM is imported only when this backend is selected (``pip install 'gopd-lab[vllm]'``). The engine runs in this
process on the student's GPU (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocate mode does), holding its own
copy of the student's weights in the run's dtype; :meth:`VllmRollout.sync` copies the trained weights into it after
every update, so each step samples from the current policy. Completions come back as token ids and become the
same :class:`~gopd_lab.rollout.Rollout` the built-in loop makes (left-padded prompts, right-padded completions,
the mask 1 up to and including EOS), so scoring and the update do not know which backend sampled.

Not exercised on CPU: ``tests/test_gpu.py`` runs it where CUDA and vLLM exist (``pytest -m gpu``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from .config import ConfigError
from .rollout import Prompts, Rollout, decode_completions, left_pad

EXTRA = "pip install 'gopd-lab[vllm]'"


def import_vllm():
    """``import vllm``, or a :class:`~gopd_lab.config.ConfigError` naming the extra that installs it."""
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(
            f"rollout_backend='vllm' needs vLLM, which is not installed: {EXTRA} (on a CUDA machine), "
            "or set rollout_backend='hf'"
        ) from err
    return vllm


def completions_to_rollout(
    prompts: Prompts,
    completions: Sequence[Sequence[int]],
    *,
    eos_token_id: int | None,
    pad_token_id: int,
    tokenizer=None,
    device: torch.device | str = "cpu",
) -> Rollout:
    """A :class:`Rollout` from generated token ids: each completion is cut after its first EOS, right-padded
    with ``pad_token_id``; the mask is 1 up to and including that EOS."""
    rows = []
    for ids in completions:
        ids = list(ids)
        if eos_token_id is not None and eos_token_id in ids:
            ids = ids[: ids.index(eos_token_id) + 1]
        rows.append(ids)
    width = max(1, max((len(r) for r in rows), default=1))
    ids_t = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids_t[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    prompt_ids, prompt_mask = left_pad(prompts.ids, pad_token_id, device)
    ids_t, mask = ids_t.to(device), mask.to(device)
    return Rollout(
        prompt_ids,
        prompt_mask,
        ids_t,
        mask,
        list(prompts.texts),
        decode_completions(tokenizer, ids_t, mask),
        list(prompts.domains),
    )


class VllmRollout:
    """A vLLM engine holding a copy of the student: :meth:`sample` → :class:`Rollout`, :meth:`sync` after updates."""

    def __init__(self, cfg, models):
        vllm = import_vllm()
        if models.device.type != "cuda":
            raise ConfigError("rollout_backend='vllm' needs the student on a CUDA device; use rollout_backend='hf'")
        from .models import resolve_dtype
        from .zoo import resolve

        os.environ.setdefault(
            "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
        )  # the engine in this process: weights load directly
        dtype = resolve_dtype(cfg.dtype, models.device)
        self.vllm, self.cfg, self.models = vllm, cfg, models
        self.llm = vllm.LLM(
            model=resolve(cfg.student),
            dtype=str(dtype).removeprefix("torch."),
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            enable_prefix_caching=False,
        )
        self.steps = 0
        self.sync(models.student)

    def sample(self, prompts: Prompts, *, max_new_tokens: int, temperature: float, top_p: float) -> Rollout:
        m = self.models
        allowed = None
        if m.vocab is not None:  # ids on one side only and padded rows: never sampled (see gopd_lab.vocab)
            allowed = m.vocab.allowed.nonzero().flatten().tolist()
        params = self.vllm.SamplingParams(
            n=1,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            seed=self.cfg.seed * 1_000_003 + self.steps,
            stop_token_ids=[m.eos_token_id] if m.eos_token_id is not None else None,
            ignore_eos=m.eos_token_id is None,
            allowed_token_ids=allowed,
            detokenize=False,
        )
        self.steps += 1
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts.ids], params, use_tqdm=False)
        completions = [out.outputs[0].token_ids for out in outputs]
        return completions_to_rollout(
            prompts,
            completions,
            eos_token_id=m.eos_token_id,
            pad_token_id=m.pad_token_id,
            tokenizer=m.tokenizer,
            device=m.device,
        )

    @torch.no_grad()
    def sync(self, student: nn.Module) -> None:
        """Copy the student's current weights into the engine (names as in the Hugging Face checkpoint)."""
        model = engine_model(self.llm)
        model.load_weights((name, p.detach()) for name, p in student.state_dict().items())


def engine_model(llm) -> nn.Module:
    """The ``nn.Module`` inside an in-process vLLM engine (the attribute path differs between vLLM releases)."""
    paths = (
        "llm_engine.model_executor.driver_worker.worker.model_runner.model",  # V1 engine, in-process
        "llm_engine.model_executor.driver_worker.model_runner.model",  # V0 engine
    )
    for path in paths:
        obj = llm
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    import vllm

    raise RuntimeError(
        f"cannot reach the model inside vLLM {vllm.__version__} to copy the student's weights into it "
        f"(tried {paths}); pin the vLLM release the 'vllm' extra names, or use rollout_backend='hf'"
    )
