"""The reference log-prob cache: one per (data, tokenizer, truncation, reference weights), shared by runs.

TRL (1.16) keys its precomputed reference log-probs in a way that changed with every seed, method, beta and
output_dir; ``SharedRefCache`` keys them by what changes the log-probs only (BENCHMARKS.md, the cache).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from datasets.fingerprint import Hasher


class _RefCacheArgs:
    """What TRL's ``_prepare_dataset`` reads from the training arguments, and nothing else.

    TRL (1.16) keys the precomputed reference log-probs by (tokenized dataset fingerprint, reference
    weights hash). ``_prepare_dataset`` filters with a lambda closing over the whole config, which
    ``datasets`` hashes into that fingerprint: every seed, method, beta or output_dir recomputed.
    """

    def __init__(self, args):
        self.dataset_num_proc = args.dataset_num_proc
        self.max_length = args.max_length
        self.truncation_mode = getattr(args, "truncation_mode", None)
        self.per_device_train_batch_size = args.per_device_train_batch_size  # KTO builds its KL pairs per batch


def _zero3_partitioned(tensor) -> bool:
    """A parameter DeepSpeed ZeRO-3 has split over the ranks: its ``.data`` is empty on every rank."""
    return hasattr(tensor, "ds_id")


def is_zero3_partitioned(model) -> bool:
    return any(_zero3_partitioned(p) for p in model.parameters())


def reference_weights_hash(model) -> str:
    """sha256 of the weights the reference uses. A PEFT model's reference is the model with its adapters
    disabled, so the adapters are left out (TRL hashes them too, and LoRA's init differs from run to run).

    Under ZeRO-3 (``zero3_init_flag``) the weights are partitioned from load on, and ``state_dict()`` holds
    empty tensors: hashing those would give every model of one architecture the same key, and a run would
    read another model's cached reference log-probs. Each partitioned tensor is gathered here, one at a
    time, on every rank (a collective: all ranks walk the same sorted keys), and hashed whole.
    """
    adapters = tuple(f".{name}." for name in getattr(model, "peft_config", {}))
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if adapters and any(a in key for a in adapters):
            continue
        gathered = contextlib.nullcontext()
        if _zero3_partitioned(tensor):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)
        with gathered:  # a copy: the gathered storage is released (and may be reused) on exit
            tensor = tensor.detach().to("cpu", copy=_zero3_partitioned(tensor))
        h.update(key.encode() + str(tensor.dtype).encode())
        h.update((tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy().tobytes())
    return h.hexdigest()


class SharedRefCache:
    """Mixin for TRL's DPO/KTO trainers: one reference log-prob cache per (data, tokenizer, truncation, reference)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return super()._prepare_dataset(dataset, processing_class, _RefCacheArgs(args), dataset_name)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if not getattr(self, "_ref_cache_keyed", False):  # once: train and eval splits share it
            weights = self._precompute_model_hash
            reference = self.accelerator.unwrap_model(self.ref_model if self.ref_model is not None else self.model)
            if self.ref_model is None and hasattr(self.model, "peft_config"):  # reference = adapters disabled
                weights = reference_weights_hash(self.model)
            elif is_zero3_partitioned(reference):  # TRL's hash saw empty (partitioned) tensors
                weights = reference_weights_hash(reference)
            # Truncation (and DPO's ld_alpha) change the log-probs of the same rows; TRL keys them only
            # through the filter's closure, which is absent with truncation_mode="keep_end".
            args = self.args
            self._precompute_model_hash = Hasher.hash(
                (weights, args.max_length, getattr(args, "truncation_mode", None), getattr(args, "ld_alpha", None)))
            self._ref_cache_keyed = True
        return super()._precompute_ref_logps(dataset, name, batch_size)
