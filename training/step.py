"""One training step and one epoch of them: a batch's inputs onto the device, the --loss
objective, backward and the optimizer, with no CPU-GPU sync between log lines."""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inputs.host_tables import move_item_mm
from inputs.input_pipeline import assembly_threads, prefetch
from objectives import objective
from training import distributed as dist

class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def host_inputs(model, batch: dict[str, np.ndarray], pin: bool) -> dict:
    """The host half of a step's inputs, built ahead of the step by the input workers: the
    batch's arrays as CPU tensors (page-locked when `pin`, so the CUDA copy is asynchronous)
    and, under "item_mm", its multimodal rows gathered from the host tables (None without)."""
    out = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in batch.items()}
    if pin:
        out = {k: t if t.is_pinned() else t.pin_memory() for k, t in out.items()}
    out["item_mm"] = dist.unwrap(model).host_item_mm(batch, pin)
    return out


def to_device(inputs: dict, device: torch.device) -> dict:
    """host_inputs' tensors (or a batch's numpy arrays) onto `device`: non_blocking copies of
    page-locked memory on CUDA (no sync; what is not pinned yet is pinned here)."""
    out = {}
    for k, v in inputs.items():
        if k == "item_mm":
            out[k] = move_item_mm(v, device)
            continue
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(v)
        if device.type == "cuda":
            t = (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
        out[k] = t
    return out


def model_inputs(model, batch: dict[str, np.ndarray], device: torch.device) -> dict:
    """A batch's inputs on `device` in one call (validation, benchmarks): host_inputs then
    to_device. The training loop runs the two halves apart, the first in the input workers."""
    return to_device(host_inputs(model, batch, device.type == "cuda"), device)


def bce_loss(pos_logits, neg_logits, batch) -> torch.Tensor:
    """The baseline's loss: BCE on positives (label 1) and negatives (label 0) over the slots
    whose next token is an item. Masked means instead of boolean indexing, which would sync the
    GPU. A negative of 0 (a user who has every item) is left out of the negative term.
    Training goes through losses.BCE now; this stays as the baseline's reference (tests)."""
    pos_mask = ((batch["next_token_type"] == 1) & (batch["pos"] != 0)).float()
    neg_mask = pos_mask * (batch["neg"] != 0)
    pos_loss = F.binary_cross_entropy_with_logits(pos_logits.float(), torch.ones_like(pos_mask),
                                                  reduction="none")
    neg_loss = F.binary_cross_entropy_with_logits(neg_logits.float(), torch.zeros_like(neg_mask),
                                                  reduction="none")
    return ((pos_loss * pos_mask).sum() / pos_mask.sum().clamp(min=1)
            + (neg_loss * neg_mask).sum() / neg_mask.sum().clamp(min=1))


def compute_loss(model, batch, args, amp_dtype) -> torch.Tensor:
    """The --loss objective of one batch (objectives/losses.py; logits and reductions in fp32)."""
    with autocast(batch["seq"].device, amp_dtype):
        loss = objective.objective_loss(model, dist.unwrap(model), batch,
                                        objective.build_objective(args))
    if args.l2_emb:
        loss = loss + args.l2_emb * dist.unwrap(model).item_emb.weight.norm()
    return loss


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_epoch(model, optimizer, batches, args, device, amp_dtype, writer, state) -> None:
    model.train()
    window, window_steps = torch.zeros((), device=device), 0
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    step_on_device = torch.full((), state.global_step, dtype=torch.long, device=device)
    prepare = functools.partial(host_inputs, model, pin=device.type == "cuda")
    # N workers: N - 1 threads assemble batches ahead, one draws their negatives in order and
    # hands them on, N - 1 prepare them for the step (inputs/input_pipeline.py)
    source = batches.epoch(state.epoch, assemblers=assembly_threads(args.input_workers))
    stream = prefetch(source, args.input_workers, prepare=prepare)
    bar = tqdm(stream, total=len(batches), desc=f"epoch {state.epoch}",
               disable=None if dist.is_main() else True, leave=False)
    for i, inputs in enumerate(bar):
        loss = compute_loss(model, to_device(inputs, device), args, amp_dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.global_step += 1
        # Remember the first non-finite step on the device; checked at log cadence (no sync,
        # and no host-to-device copy of the step number either).
        step_on_device += 1
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), step_on_device,
                               bad_step)
        window, window_steps = window + loss.detach(), window_steps + 1
        if state.global_step % args.log_every == 0 or i == len(batches) - 1:
            _check_finite(bad_step)
            log_train(writer, model, state, float(window) / window_steps, bar)
            window, window_steps = torch.zeros((), device=device), 0
    _check_finite(bad_step)


def _check_finite(bad_step: torch.Tensor) -> None:
    step = int(bad_step)
    if step >= 0:
        raise NonFiniteLoss(f"the loss became non-finite at step {step}; the last checkpoint "
                            "is intact (try a lower --lr or --amp none)")


def log_train(writer, model, state, loss: float, bar) -> None:
    bar.set_postfix(loss=f"{loss:.4f}")
    writer.add_scalar("Loss/train", loss, state.global_step)
    log_similarity(writer, model, state.global_step)


def log_similarity(writer, model, step: int) -> None:
    # scalars() reads parameters with .item(): a GPU sync, so only at log cadence.
    for name, value in dist.unwrap(model).similarity.scalars().items():
        writer.add_scalar(f"Similarity/{name}", value, step)

