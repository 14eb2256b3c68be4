"""rest_fast.apply_kernels: one training step through the fused kernels (Triton's interpreter on
CPU) equals the reference's, loss and every gradient, for the teacher's and the student's losses
(L_S, L_CON, L_SMO), at a tiny shape and at one that spans several tiles of every kernel."""
import dataclasses
import json

import pytest
import torch

from reference.asd import make_noisy_clip, student_loss, teacher_loss
from reference.checkpoint import load_checkpoint, save_checkpoint
from reference.dit import BlockMaskAttention
from reference.model import RestModel
from reference.pipeline import generate
from rest_fast.ops import AttentionLayout, HAS_TRITON, force_backend
from rest_fast.training import apply_kernels, kernels_active, training_backend
from tests.conftest import (GRAD_SCALE_FLOOR, TRAIN_STEP_RTOL, make_tiny_config, relative_difference,
                            sensitive_model, speech_like)

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def config(resolution: int):
    """tiny (4 x 4 latent tokens a frame) or a wider one: 8 x 8 tokens, so that a frame's tokens
    span two audio-attention tiles (32) and a 2-chunk student pass 7 attention tiles (64)."""
    cfg = dataclasses.replace(make_tiny_config(), resolution=resolution)
    return dataclasses.replace(cfg, asd=dataclasses.replace(cfg.asd, lambda_con=0.5, lambda_smo=2.0)).validate()


def batch(cfg, num_chunks=2, seed=0, clips=2):
    g = torch.Generator().manual_seed(seed)
    frames = 1 + num_chunks * cfg.chunk_latent_frames
    z0 = torch.randn(clips, cfg.vae.latent_channels, frames, cfg.latent_size, cfg.latent_size, generator=g)
    audio = torch.randn(clips, frames - 1, cfg.speech.audio_tokens_per_frame, cfg.speech.audio_dim, generator=g)
    return z0, audio


def step(model, teacher, cfg, z0, audio, kernels: bool, stage: str):
    """Noisy clip, loss and gradients of one step, with or without the kernels."""
    model.zero_grad(set_to_none=True)
    patches = [apply_kernels(m) for m in (model, teacher)] if kernels else []
    try:
        with force_backend("triton" if kernels else None):
            clip = make_noisy_clip(z0, audio, cfg.chunk_latent_frames, cfg.asd,
                                   torch.Generator().manual_seed(3), noise=model.dit.noise_and_target)
            if stage == "teacher":
                loss, logs = teacher_loss(model.dit, clip)
            else:
                loss, logs = student_loss(model.dit, teacher.dit, clip, cfg.asd)
            loss.backward()
    finally:
        for patch in patches:
            patch.undo()
    grads = {n: p.grad.clone() for n, p in model.dit.named_parameters() if p.grad is not None}
    return clip, loss.detach(), logs, grads


@needs_triton
@pytest.mark.parametrize("resolution", [64, 128], ids=["tiny", "multi-tile"])
@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_one_step_with_kernels_equals_the_reference(resolution, stage):
    cfg = config(resolution)
    model, teacher = sensitive_model(cfg, seed=1).train(), sensitive_model(cfg, seed=2).eval()
    teacher.requires_grad_(False)
    z0, audio = batch(cfg, clips=2 if resolution == 64 else 1)     # L_CON's negatives stay in a clip
    ref_clip, ref_loss, ref_logs, ref_grads = step(model, teacher, cfg, z0, audio, False, stage)
    clip, loss, logs, grads = step(model, teacher, cfg, z0, audio, True, stage)
    for name in ("z_t", "target"):
        assert relative_difference(getattr(clip, name), getattr(ref_clip, name)) <= TRAIN_STEP_RTOL
    if stage == "student":
        assert set(logs) == set(ref_logs) >= {"loss_s", "loss_con", "loss_smo"}
        for part in ("loss_s", "loss_con", "loss_smo"):
            assert logs[part] == pytest.approx(ref_logs[part], rel=TRAIN_STEP_RTOL)
    assert relative_difference(loss, ref_loss) <= TRAIN_STEP_RTOL
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.dit.parameters()))
    assert_grads_close(grads, ref_grads)


@needs_triton
def test_a_short_chunk_student_step_with_kernels_equals_the_reference():
    """1 latent frame a chunk, W = 3, 5 chunks a clip: the fused student pass reads each chunk's
    three predecessors, as the reference's block mask does."""
    cfg = make_tiny_config()
    cfg.chunk_latent_frames, cfg.prev_chunks = 1, 3
    cfg = dataclasses.replace(cfg, asd=dataclasses.replace(cfg.asd, lambda_con=0.5, lambda_smo=2.0)).validate()
    model, teacher = sensitive_model(cfg, seed=1).train(), sensitive_model(cfg, seed=2).eval()
    teacher.requires_grad_(False)
    z0, audio = batch(cfg, num_chunks=5)
    _, ref_loss, _, ref_grads = step(model, teacher, cfg, z0, audio, False, "student")
    _, loss, _, grads = step(model, teacher, cfg, z0, audio, True, "student")
    assert relative_difference(loss, ref_loss) <= TRAIN_STEP_RTOL
    assert_grads_close(grads, ref_grads)


def assert_grads_close(grads, ref_grads):
    """Every gradient within TRAIN_STEP_RTOL of its largest entry (or of GRAD_SCALE_FLOOR times
    the model's largest gradient entry, for gradients that nearly cancel)."""
    floor = GRAD_SCALE_FLOOR * max(g.abs().max().item() for g in ref_grads.values())
    errors = {n: (grads[n] - ref_grads[n]).abs().max().item() / max(ref_grads[n].abs().max().item(), floor)
              for n in ref_grads}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TRAIN_STEP_RTOL, (worst, errors[worst])


@needs_triton
def test_the_kernel_path_builds_no_dense_mask(monkeypatch):
    """No (L x L) mask or score matrix on the kernel path: the reference's mask and the layout's
    dense mask are never asked for (the kernels keep O(L) statistics: the log-sum-exp per query)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dense mask was built on the kernel path")
    monkeypatch.setattr(BlockMaskAttention, "_mask", refuse)
    monkeypatch.setattr(AttentionLayout, "dense_mask", refuse)
    cfg = config(64)
    model, teacher = sensitive_model(cfg, seed=1).train(), sensitive_model(cfg, seed=2).eval()
    step(model, teacher, cfg, *batch(cfg), True, "student")
    with pytest.raises(AssertionError, match="dense mask"):       # the reference does build it
        step(model, teacher, cfg, *batch(cfg), False, "student")


def test_apply_kernels_undoes_and_refuses_twice():
    model = RestModel.random(make_tiny_config())
    patch = apply_kernels(model)
    assert kernels_active(model)
    with pytest.raises(RuntimeError, match="already patched"):
        apply_kernels(model)
    patch.undo()
    assert not kernels_active(model)
    assert "norm_modulate" not in vars(model.dit.blocks[0])
    with apply_kernels(model.dit, adaln=False):           # parts can be left out
        assert "norm_modulate" not in vars(model.dit.blocks[0])
        assert "attend" in vars(model.dit.blocks[0].audio_attn)
    assert not kernels_active(model)


@needs_triton
def test_a_few_steps_from_one_seed_reach_the_same_loss():
    cfg = config(64)
    losses = {}
    for kernels in (False, True):
        model = sensitive_model(cfg, seed=1).train()
        teacher = sensitive_model(cfg, seed=2).eval().requires_grad_(False)
        opt = torch.optim.AdamW(model.dit.parameters(), lr=1e-3)
        losses[kernels] = []
        for i in range(3):
            _, loss, _, _ = step(model, teacher, cfg, *batch(cfg, seed=i, clips=1), kernels, "student")
            opt.step()
            losses[kernels].append(loss.item())
    assert losses[True] == pytest.approx(losses[False], rel=10 * TRAIN_STEP_RTOL)
    assert losses[True][-1] != losses[True][0]                    # the steps did train


def test_train_student_with_kernels_on_cpu_logs_the_path_and_loads_in_the_reference(tmp_path, capsys):
    """`rest-fast train student --kernels on` on CPU: through the interpreter here (the tests set
    TRITON_INTERPRET=1), else the twins; the checkpoint is a reference checkpoint."""
    from rest_fast.cli import main
    init = save_checkpoint(RestModel.random(make_tiny_config()), tmp_path / "init")
    out = tmp_path / "student"
    code = main(["train", "student", "--init", str(init), "--out", str(out), "--steps", "2",
                 "--batch-size", "1", "--cache-clips", "3", "--cache-dir", str(tmp_path / "cache"),
                 "--log-every", "1", "--kernels", "on", "--quiet"])
    assert code == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    expected = training_backend("on", torch.device("cpu")).name
    assert [r["dit_ops"] for r in log] == [expected, expected]
    assert expected in ("kernels (Triton interpreter)", "kernels (torch twins on CPU)")
    model = load_checkpoint(out)
    frames = generate(model, torch.full((64, 64, 3), 120, dtype=torch.uint8).numpy(),
                      speech_like(1.0), seed=0)
    assert frames.shape[1:] == (64, 64, 3) and len(frames) == 25


def test_distribution_matching_runs_its_fake_score_through_the_kernels_too(tmp_path):
    """`train distill --method dmd --kernels on`: the student, the real score and the fake score
    (the objective's auxiliary DiT) all go through the fused ops."""
    from reference.train import TrainArgs, Trainer
    init = save_checkpoint(RestModel.random(make_tiny_config()), tmp_path / "init")
    args = TrainArgs(stage="distill", distill_kind="dmd", out=str(tmp_path / "dmd2"), init=str(init),
                     steps=1, batch_size=1, cache_clips=3, cache_chunks=2, cache_dir=str(tmp_path / "cache"),
                     progress=False, overrides=["sampling.steps=2", "sampling.cfg_mode=none"])
    backend = training_backend("on", torch.device("cpu"))
    trainer = Trainer(args, backend)
    assert kernels_active(trainer.model) and kernels_active(trainer.auxiliary)
    with backend.step():
        assert torch.isfinite(trainer.objective(trainer.objective.make_batch(
            trainer, torch.Generator().manual_seed(0), None))[0])


def test_kernels_auto_is_off_on_cpu_and_on_for_cuda():
    assert training_backend("auto", torch.device("cpu")).name == "reference"
    assert training_backend("off", torch.device("cuda")).name == "reference"
    assert training_backend("auto", torch.device("cuda")).name == "kernels (Triton)"
    with pytest.raises(ValueError, match="auto, on or off"):
        training_backend("yes", torch.device("cpu"))


@needs_triton
@pytest.mark.parametrize("extra", [["--kernels", "on"],
                                   ["--kernels", "on", "--fsdp", "--bf16", "--grad-checkpoint"]],
                         ids=["ddp", "fsdp2-bf16-checkpointing"])
def test_kernels_under_ddp_and_fsdp2_with_two_gloo_processes(tmp_path, extra):
    """Two processes (gloo), the kernels in Triton's interpreter: DDP, and FSDP2 with bf16
    autocast and activation checkpointing."""
    from tests.reference.test_train import torchrun
    init = save_checkpoint(RestModel.random(make_tiny_config()), tmp_path / "init")
    port = 29531 if "--fsdp" in extra else 29530
    log = torchrun(tmp_path, init, tmp_path / "run", "--steps", "2", *extra, port=port)
    assert [r["step"] for r in log] == [1, 2]
    assert {r["dit_ops"] for r in log} == {"kernels (Triton interpreter)"}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    load_checkpoint(tmp_path / "run")
