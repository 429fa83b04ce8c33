"""Optional rollout backend on vLLM (``RunConfig.rollout_backend="vllm"``), for long completions on a GPU.

vLLM is imported only when this backend is selected (``pip install 'gopd-lab[vllm]'``). The engine runs in this
process on the student's GPU (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocate mode does), holding its own
copy of the student's weights in the run's dtype; :meth:`VllmRollout.sync` copies the trained weights into it after
every update, so each step samples from the current policy. Completions come back as token ids and become the
same :class:`~gopd_lab.lm.rollout.Rollout` the built-in loop makes (left-padded prompts, right-padded completions,
the mask 1 up to and including EOS), so scoring and the update do not know which backend sampled.

Every row samples with its own seed (the row seeds :func:`gopd_lab.loop.train.row_seed` derives from the run's seed,
the step and the row's place in the batch), so repeated prompts get independent completions and a resumed run
draws what the uninterrupted one would have. Generation stops at :attr:`gopd_lab.lm.models.Models.stop_token_ids`,
the same ids the built-in loop stops at. One process only: the engine would hold FSDP shards or ignore the
data-parallel split, so a multi-process run is refused at construction.

``tests/test_vllm_stub.py`` runs the backend on CPU against a stand-in ``vllm`` module (seeds, stop ids, allowed ids,
the weight names synced); ``tests/test_gpu.py`` runs the real engine where CUDA and vLLM exist (``pytest -m gpu``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from gopd_lab.config import ConfigError
from gopd_lab.lm.rollout import Prompts, Rollout, decode_completions, left_pad, stop_ids

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
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    tokenizer=None,
    device: torch.device | str = "cpu",
) -> Rollout:
    """A :class:`Rollout` from generated token ids: each completion is cut after its first EOS, right-padded
    with ``pad_token_id``; the mask is 1 up to and including that EOS (``eos_token_id`` may be several stop ids)."""
    stops = set(stop_ids(eos_token_id))
    rows = []
    for ids in completions:
        ids = list(ids)
        end = next((i for i, t in enumerate(ids) if t in stops), None)
        rows.append(ids if end is None else ids[: end + 1])
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


def world_size() -> int:
    """Processes in this run: the initialised process group's size, else torchrun's ``WORLD_SIZE`` (1 without)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_single_process() -> None:
    """Refuse a multi-process run: each process would start its own engine, sync FSDP shards (not whole weights)
    into it and sample rows the data-parallel split did not give it."""
    world = world_size()
    if world > 1:
        raise ConfigError(
            f"rollout_backend='vllm' runs in one process, but this run has {world} (torchrun / WORLD_SIZE); "
            "launch one process, or use rollout_backend='hf' for data-parallel or FSDP runs"
        )


def check_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError("rollout_backend='vllm' needs the student on a CUDA device; use rollout_backend='hf'")


SEED_MOD = 2**63 - 1
"""vLLM's per-request seeds seed a ``torch.Generator``: row seeds are reduced below 2**63."""


class VllmRollout:
    """A vLLM engine holding a copy of the student: :meth:`sample` → :class:`Rollout`, :meth:`sync` after updates."""

    def __init__(self, cfg, models):
        check_single_process()
        vllm = import_vllm()
        check_device(models.device)
        from gopd_lab.lm.models import resolve_dtype
        from gopd_lab.world.zoo import resolve

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
        self.sync(models.student)

    def sample(
        self, prompts: Prompts, *, max_new_tokens: int, temperature: float, top_p: float, row_seeds: Sequence[int]
    ) -> Rollout:
        """One completion per prompt; row ``i`` samples with seed ``row_seeds[i]`` (one ``SamplingParams`` each)."""
        m = self.models
        if len(row_seeds) != len(prompts):
            raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} prompts")
        allowed = None
        if m.vocab is not None:  # ids on one side only and padded rows: never sampled (see gopd_lab.lm.vocab)
            allowed = m.vocab.allowed.nonzero().flatten().tolist()
        stops = m.stop_token_ids
        params = [
            self.vllm.SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                seed=int(seed) % SEED_MOD,
                stop_token_ids=stops or None,
                ignore_eos=not stops,
                allowed_token_ids=allowed,
                detokenize=False,
            )
            for seed in row_seeds
        ]
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts.ids], params, use_tqdm=False)
        completions = [out.outputs[0].token_ids for out in outputs]
        return completions_to_rollout(
            prompts,
            completions,
            eos_token_id=stops,
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
