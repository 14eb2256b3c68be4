"""One training step of the DiT stages, timed three ways: the reference's ops (SDPA, with the
student's dense block mask), rest_fast.apply_kernels (Triton on a GPU; its torch twins on a CPU,
which compute what the reference does), and FlexAttention with a block mask (compiled, the best
existing path for block-sparse attention). Used by bench/test_train_step.py and bench/gpu_proof.py.

A step is what `rest-fast train` does: a noisy clip (asynchronous noise), the loss (teacher: flow
matching under full attention; student: L_S + L_CON + L_SMO against a frozen teacher), backward,
AdamW. Figures: milliseconds a step (median), tokens a second (the DiT's tokens of the clip
batch over step time), the loss against the reference's, and on CUDA the peak memory.
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import torch

from reference.asd import make_noisy_clip, student_loss, teacher_loss
from reference.config import get_config
from reference.dit import BlockMaskAttention, FullAttention, apply_rope
from reference.model import RestModel
from rest_fast.training import apply_kernels

PATHS = ("reference", "kernels", "flex")


# ---- FlexAttention as a topology ------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _flex():
    """(compiled flex_attention, create_block_mask), made once."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    return torch.compile(flex_attention, dynamic=False), create_block_mask


class FlexFullAttention(FullAttention):
    def __call__(self, layer, q, k, v):
        flex, _ = _flex()
        return flex(apply_rope(q, self.angles), apply_rope(k, self.angles), v)


class FlexBlockMaskAttention(BlockMaskAttention):
    """The student's pass with FlexAttention: the reference's keys, a block mask from the
    layout's rule (chunk i sees sink copy i and chunks i-W .. i; the sink itself only)."""

    def __call__(self, layer, q, k, v):
        flex, create_block_mask = _flex()
        keys, values = self.keys_values(k, v)
        s, n, chunks = self.sink_len, self.chunk_len, self.k
        use_sink, back = self.use_sink, self.prev_chunks if self.use_prev else 0

        def mask_mod(b, h, qi, ki):
            chunk = (qi - s) // n
            sink_ok = (ki >= chunk * s) & (ki < (chunk + 1) * s) & use_sink
            lo = chunks * s + torch.clamp(chunk - back, min=0) * n
            context_ok = (ki >= lo) & (ki < chunks * s + (chunk + 1) * n)
            return torch.where(qi < s, ki < s, sink_ok | context_ok)
        key = (q.shape[2], keys.shape[2], s, n, use_sink, back, q.device)
        if key not in _block_masks:
            _block_masks[key] = create_block_mask(mask_mod, None, None, q.shape[2], keys.shape[2],
                                                  device=q.device)
        return flex(apply_rope(q, self.q_angles), keys, values, block_mask=_block_masks[key])


_block_masks: dict = {}


def use_flex(model) -> None:
    """Point the model's DiT topologies at FlexAttention (models here are built per measurement)."""
    model.dit.teacher_topology, model.dit.student_topology = FlexFullAttention, FlexBlockMaskAttention


# ---- one step -------------------------------------------------------------------------------

@dataclasses.dataclass
class StepResult:
    stage: str
    path: str
    ms: float
    tokens_per_s: float
    loss: float
    peak_gib: float | None


def measure(preset: str = "cpu", device: str = "cpu", dtype: torch.dtype = torch.float32,
            batch: int = 2, num_chunks: int = 2, grad_checkpoint: bool = False, rounds: int = 5,
            warmup: int = 2, paths=PATHS, stages=("teacher", "student")) -> list[StepResult]:
    """Every (stage, path): a training step's median time over ``rounds`` after ``warmup``."""
    device = torch.device(device)
    cfg = get_config(preset)
    results = []
    for stage in stages:
        for path in paths:
            model = RestModel.random(cfg, seed=1).to(device).train()
            teacher = RestModel.random(cfg, seed=2).to(device).eval().requires_grad_(False)
            model.dit.gradient_checkpointing = grad_checkpoint
            if path == "kernels":
                apply_kernels(model), apply_kernels(teacher)
            elif path == "flex":
                use_flex(model), use_flex(teacher)
            results.append(_time_steps(model, teacher, cfg, stage, path, device, dtype, batch,
                                       num_chunks, rounds, warmup))
    return results


def _time_steps(model, teacher, cfg, stage, path, device, dtype, batch, num_chunks, rounds, warmup):
    g = torch.Generator().manual_seed(0)
    frames = 1 + num_chunks * cfg.chunk_latent_frames
    z0 = torch.randn(batch, cfg.vae.latent_channels, frames, cfg.latent_size, cfg.latent_size, generator=g).to(device)
    audio = torch.randn(batch, frames - 1, cfg.speech.audio_tokens_per_frame, cfg.speech.audio_dim,
                        generator=g).to(device)
    opt = torch.optim.AdamW(model.dit.parameters(), lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    losses = []

    def one_step():
        clip = make_noisy_clip(z0, audio, cfg.chunk_latent_frames, cfg.asd, torch.Generator().manual_seed(1),
                               noise=model.dit.noise_and_target)
        with autocast:
            if stage == "teacher":
                loss, _ = teacher_loss(model.dit, clip)
            else:
                loss, _ = student_loss(model.dit, teacher.dit, clip, cfg.asd)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())       # also a sync point

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    tokens = batch * frames * (cfg.latent_size // cfg.dit.patch_size) ** 2
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return StepResult(stage, path, ms, tokens / (ms / 1e3), losses[0], peak)


def table(results: list[StepResult]) -> str:
    ref = {r.stage: r for r in results if r.path == "reference"}
    lines = ["| stage | path | ms / step | tokens / s | vs reference | first loss (reference) | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        base = ref.get(r.stage)
        speed = f"{base.ms / r.ms:.2f}x" if base else ""
        peak = f"{r.peak_gib:.1f} GiB" if r.peak_gib is not None else "-"
        lines.append(f"| {r.stage} | {r.path} | {r.ms:.1f} | {r.tokens_per_s:,.0f} | {speed} | "
                     f"{r.loss:.5f} ({base.loss:.5f}) | {peak} |" if base else
                     f"| {r.stage} | {r.path} | {r.ms:.1f} | {r.tokens_per_s:,.0f} | | {r.loss:.5f} | {peak} |")
    return "\n".join(lines)
