"""The training loop: stages chain, loss goes down, resume is bit-exact, DDP runs on 2 processes."""
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reference.checkpoint import load_checkpoint, save_checkpoint
from reference.model import RestModel
from reference.train import TrainArgs, Trainer, apply_overrides, step_generators, train
from tests.conftest import make_tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_init(tmp_path):
    return save_checkpoint(RestModel.random(make_tiny_config()), tmp_path / "init")


def tiny_args(tmp_path, stage, init, **kw):
    defaults = dict(stage=stage, out=str(tmp_path / stage), init=str(init), steps=3, batch_size=2,
                    save_every=2, log_every=1, cache_clips=3, cache_chunks=2, warmup=1,
                    cache_dir=str(tmp_path / "cache"), progress=False)
    defaults.update(kw)
    return TrainArgs(**defaults)


def test_stages_chain_and_write_loadable_checkpoints(tmp_path, tiny_init):
    init = tiny_init
    for stage in ("vae", "speech", "teacher", "student"):
        out = train(tiny_args(tmp_path, stage, init))
        model = load_checkpoint(out)
        log = [json.loads(line) for line in (tmp_path / stage / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
        if stage == "vae":  # latent statistics measured from the trained VAE
            assert not torch.allclose(model.latent_std, torch.ones_like(model.latent_std))
        if stage == "student":
            assert {"loss_s", "loss_con", "loss_smo"} <= set(log[-1])
        # What the DiT is made for: untouched by the vae and speech stages (random: unknown),
        # every CFG branch after the teacher and student stages (trained with condition dropout).
        assert model.cfg.provenance.kind == ("unknown" if stage in ("vae", "speech") else "guidance_dropout")
        init = tmp_path / stage  # a run directory loads as its latest checkpoint
    # The DiT stages shared one encoded pool.
    assert len(list((tmp_path / "cache").glob("latent-clips-*.safetensors"))) == 1


def test_a_changed_renderer_is_not_read_from_a_stale_pool(tmp_path, tiny_init, monkeypatch):
    """The encoded pool keys on the synthetic data's version as well as on the encoder: clips drawn
    differently (the lively data's version 2 drew larger eyes) are encoded anew."""
    from reference.data import synthetic
    train(tiny_args(tmp_path, "teacher", tiny_init, steps=1))
    monkeypatch.setitem(synthetic.DATA_VERSIONS, "calm", 99)
    train(tiny_args(tmp_path, "teacher", tiny_init, steps=1, out=str(tmp_path / "teacher_v99")))
    assert len(list((tmp_path / "cache").glob("latent-clips-*.safetensors"))) == 2


def test_only_the_stage_module_changes(tmp_path, tiny_init):
    before = load_checkpoint(tiny_init).state_dict()
    after = load_checkpoint(train(tiny_args(tmp_path, "speech", tiny_init))).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"speech_ae"}


def test_resume_continues_bit_exactly(tmp_path, tiny_init):
    straight = train(tiny_args(tmp_path / "a", "teacher", tiny_init, steps=4, save_every=4))
    args = tiny_args(tmp_path / "b", "teacher", tiny_init, steps=4, save_every=4)
    first = Trainer(args)
    first.train_step()
    first.train_step()
    first.save()  # what an interruption after step 2 leaves behind
    resumed = train(tiny_args(tmp_path / "b", "teacher", tiny_init, steps=4, save_every=4, resume=True))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "a" / "teacher" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "teacher" / "log.jsonl").read_text().splitlines()
    assert json.loads(log_a[-1])["loss"] == json.loads(log_b[-1])["loss"]
    assert json.loads(log_b[-1])["step"] == 4


def test_resume_refuses_another_stage(tmp_path, tiny_init):
    train(tiny_args(tmp_path, "vae", tiny_init, steps=1))
    with pytest.raises(ValueError, match="stage 'vae'"):
        Trainer(tiny_args(tmp_path, "speech", tiny_init, out=str(tmp_path / "vae"), resume=True))


@pytest.mark.parametrize("stage", ["vae", "teacher"])
def test_a_few_steps_reduce_the_loss_on_the_cpu_preset(tmp_path, stage):
    init = save_checkpoint(RestModel.random(__import__("reference.config", fromlist=["x"]).cpu_config()),
                           tmp_path / "init")
    args = TrainArgs(stage=stage, out=str(tmp_path / stage), init=str(init), steps=12, batch_size=2,
                     lr=2e-3, warmup=1, save_every=100, log_every=100, cache_clips=2, cache_chunks=2,
                     cache_dir=str(tmp_path / "cache"), progress=False)
    trainer = Trainer(args)
    fixed = trainer.objective.make_batch(trainer, *step_generators(args, 10_000, 0))
    with torch.no_grad():
        before = trainer.objective(fixed)[0].item()
    trainer.run()
    with torch.no_grad():
        after = trainer.objective(fixed)[0].item()
    assert after < 0.9 * before, (before, after)


def test_decoder_stage_distils_a_light_decoder_and_resumes(tmp_path, tiny_init):
    """The light decoder stage: only the light decoder changes, the checkpoint renders with it and
    carries the sampler given on the command line; a resumed run continues bit-exactly."""
    kw = dict(num_chunks=1, steps=4, save_every=2, overrides=["vae.light_width=8",
                                                              "sampling.cfg_mode=none", "sampling.steps=2"])
    straight = train(tiny_args(tmp_path / "a", "decoder", tiny_init, **kw))
    first = Trainer(tiny_args(tmp_path / "b", "decoder", tiny_init, **kw))
    first.train_step()
    first.train_step()
    first.save()
    resumed = train(tiny_args(tmp_path / "b", "decoder", tiny_init, resume=True, **kw))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, start = load_checkpoint(straight), load_checkpoint(tiny_init)
    assert model.cfg.vae.decoder == "light" and model.cfg.vae.light_width == 8
    assert model.cfg.sampling.cfg_mode == "none" and model.cfg.sampling.steps == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "a" / "decoder" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["psnr_vs_full"]) for r in log)
    with pytest.raises(ValueError, match="pass --init"):
        Trainer(dataclasses.replace(tiny_args(tmp_path / "c", "decoder", tiny_init), init=None))


def test_distill_runs_guidance_then_step_phases_and_resumes(tmp_path, tiny_init):
    """One command, one phase after another: k8 (guidance: one branch, 8 steps), k4, k2; each a
    complete checkpoint that samples as it was distilled to, taught by the phase before it."""
    from reference.distill import distill_phases
    assert distill_phases(8, 2) == [("guidance", 8), ("steps", 4), ("steps", 2)]
    with pytest.raises(ValueError, match="halves"):
        distill_phases(8, 3)
    args = tiny_args(tmp_path, "distill", tiny_init, num_chunks=2, steps=2, save_every=1, sampler_steps=2)
    out = train(args)
    assert out == tmp_path / "distill" / "k2" / "latest"
    for k in (8, 4, 2):
        model = load_checkpoint(tmp_path / "distill" / f"k{k}")
        assert model.cfg.sampling.steps == k and model.cfg.sampling.cfg_mode == "none"
        # Each phase records the steps it learnt and the teacher's Joint-CFG scale it folds in.
        assert dataclasses.asdict(model.cfg.provenance) == dict(
            kind="distilled", method="progressive", steps=k, guidance_scale=6.0, joint_scale_checked=1.0)
        log = [json.loads(line) for line in (tmp_path / "distill" / f"k{k}" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    before = (tmp_path / "distill" / "k2" / "log.jsonl").read_text()
    assert train(dataclasses.replace(args, resume=True)) == out           # every phase is done
    # Without --cache-dir every phase reads the pool of <out>/../cache, as the other stages of the
    # run do: one pool, encoded once, not one per phase under <out>.
    pools = sorted((tmp_path / "cache").glob("latent-clips-*"))
    again = dataclasses.replace(args, out=str(tmp_path / "distill2"), cache_dir=None, sampler_steps=8, steps=1)
    assert train(again) == tmp_path / "distill2" / "k8" / "latest"
    assert sorted((tmp_path / "cache").glob("latent-clips-*")) == pools
    assert not list((tmp_path / "distill2").glob("**/latent-clips-*"))
    assert (tmp_path / "distill" / "k2" / "log.jsonl").read_text() == before


def test_distill_by_distribution_matching_resumes_bit_exactly(tmp_path, tiny_init):
    """--method dmd: one phase, <out>/dmd<K>, the student one-branch at K steps; its fake score
    and the fake score's optimizer state live in the train state, so an interrupted run resumes
    to the same weights as a straight one (a fake score restarted from the teacher would not)."""
    from reference.distill import distill_phases
    assert distill_phases(8, 3, "dmd") == [("dmd", 3)]
    assert distill_phases(8, 2, "progressive+dmd")[-2:] == [("steps", 2), ("dmd", 2)]
    args = tiny_args(tmp_path / "a", "distill", tiny_init, num_chunks=2, steps=3, save_every=3,
                     sampler_steps=2, distill_method="dmd", fake_updates=2)
    straight = train(args)
    assert straight == tmp_path / "a" / "distill" / "dmd2" / "latest"
    model = load_checkpoint(straight)
    assert model.cfg.sampling.steps == 2 and model.cfg.sampling.cfg_mode == "none"
    assert (model.cfg.provenance.kind, model.cfg.provenance.method, model.cfg.provenance.steps) == ("distilled", "dmd", 2)
    log_file = tmp_path / "a" / "distill" / "dmd2" / "log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert ["loss_dmd" in r for r in log] == [False, True, False]     # fake_updates 2: the student every 2nd
    assert all("loss_fake" in r and np.isfinite(r["loss"]) for r in log)
    phase = dataclasses.replace(args, out=str(tmp_path / "b" / "dmd2"), distill_kind="dmd",
                                overrides=["sampling.steps=2", "sampling.cfg_mode=none"])
    first = Trainer(phase)
    first.train_step()
    first.train_step()
    first.save()
    resumed = train(dataclasses.replace(args, out=str(tmp_path / "b"), resume=True))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    (resumed / "auxiliary.pt").unlink()      # a hand-edited run: refused by name, not by torch.load
    with pytest.raises(ValueError, match="auxiliary.pt is missing"):
        train(dataclasses.replace(args, out=str(tmp_path / "b"), resume=True, steps=4))
    with pytest.raises(ValueError, match="Joint-CFG teacher"):   # a one-branch student teaches nothing
        train(dataclasses.replace(args, init=str(straight), out=str(tmp_path / "d")))


def test_overrides_edit_the_config():
    cfg = apply_overrides(make_tiny_config(), ["asd.lambda_con=0", "dit.student_sink=false",
                                               "sampling.cfg_scale=4.5"])
    assert cfg.asd.lambda_con == 0.0 and cfg.dit.student_sink is False and cfg.sampling.cfg_scale == 4.5
    with pytest.raises(ValueError, match="no config field"):
        apply_overrides(cfg, ["asd.lambda_typo=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["asd.lambda_con"])
    assert apply_overrides(cfg, ["vae.block_channels=8,8,8,8"]).vae.block_channels == (8, 8, 8, 8)


def torchrun(tmp_path, init, out, *extra, port=29517, stage="teacher", run_dir=None):
    """Two gloo processes of `rest-fast train STAGE`; the log of ``run_dir`` (default ``out``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "rest_fast.cli", "train", stage, "--init", str(init), "--out", str(out),
           "--batch-size", "1", "--cache-clips", "3", "--cache-dir", str(tmp_path / "cache"),
           "--log-every", "1", "--quiet", *extra]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in ((run_dir or out) / "log.jsonl").read_text().splitlines()]


def test_ddp_with_two_gloo_processes(tmp_path, tiny_init):
    log = torchrun(tmp_path, tiny_init, tmp_path / "ddp", "--steps", "3")
    assert [r["step"] for r in log] == [1, 2, 3]
    state = torch.load(tmp_path / "ddp" / "latest" / "train_state.pt", weights_only=False)
    assert state["world"] == 2
    load_checkpoint(tmp_path / "ddp")


def test_fsdp_with_two_gloo_processes_saves_and_resumes(tmp_path, tiny_init):
    torchrun(tmp_path, tiny_init, tmp_path / "fsdp", "--steps", "2", "--fsdp", port=29518)
    log = torchrun(tmp_path, tiny_init, tmp_path / "fsdp", "--steps", "3", "--fsdp", "--resume", port=29519)
    assert [r["step"] for r in log] == [1, 2, 3]
    model = load_checkpoint(tmp_path / "fsdp")  # full (gathered) weights, loadable anywhere
    start = load_checkpoint(tiny_init)
    assert not torch.equal(model.dit.patch_in.weight, start.dit.patch_in.weight)
    assert torch.equal(model.vae.decoder.conv_in.conv.weight, start.vae.decoder.conv_in.conv.weight)


@pytest.mark.parametrize("sharding", ["--fsdp", None], ids=["fsdp", "ddp"])
def test_distribution_matching_with_two_gloo_processes(tmp_path, tiny_init, sharding):
    """DMD trains two DiTs (the student and its fake score): under FSDP both sharded; both saved
    whole, and a resumed run picks the fake score up where it stopped. The first step of two
    trains the fake score alone (--fake-updates 2), which DDP must allow."""
    out, port = tmp_path / "distill", 29520 if sharding else 29522
    dmd = ("--method", "dmd", "--sampler-steps", "2", "--num-chunks", "2", "--fake-updates", "2",
           *([sharding] if sharding else []))
    torchrun(tmp_path, tiny_init, out, "--steps", "1", *dmd, stage="distill", run_dir=out / "dmd2", port=port)
    fake_after_1 = torch.load(out / "dmd2" / "latest" / "auxiliary.pt")
    log = torchrun(tmp_path, tiny_init, out, "--steps", "2", "--resume", *dmd, stage="distill",
                   run_dir=out / "dmd2", port=port + 1)
    assert [r["step"] for r in log] == [1, 2] and ["loss_dmd" in r for r in log] == [False, True]
    fake = torch.load(out / "dmd2" / "latest" / "auxiliary.pt")
    teacher = load_checkpoint(tiny_init).dit.state_dict()
    assert {k: v.shape for k, v in fake.items()} == {k: v.shape for k, v in teacher.items()}
    assert not torch.equal(fake["patch_in.weight"], fake_after_1["patch_in.weight"])
    assert not torch.equal(fake_after_1["patch_in.weight"], teacher["patch_in.weight"])
    assert load_checkpoint(out / "dmd2").cfg.sampling.steps == 2


def test_vae_trains_on_single_images_and_refuses_bad_clip_lengths(tmp_path, tiny_init):
    out = train(tiny_args(tmp_path, "vae", tiny_init, vae_frames=1, steps=2))
    log = [json.loads(line) for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and r["motion"] == 0 for r in log)
    load_checkpoint(out)
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        Trainer(tiny_args(tmp_path / "bad", "vae", tiny_init, vae_frames=4))


def test_mouth_and_eye_weights_mark_their_boxes(tmp_path, tiny_init):
    trainer = Trainer(tiny_args(tmp_path, "vae", tiny_init, mouth_weight=10.0, batch_size=3))
    batch = trainer.objective.make_batch(trainer, *step_generators(trainer.args, 0, 0))
    weight = batch["weight"]
    assert weight.shape == (3, 1, 1, 64, 64) and set(weight.unique().tolist()) == {1.0, 11.0}
    mouth = (weight > 1).float().mean()
    assert 0.01 < mouth < 0.1   # the mouth is a small part of the frame
    both = Trainer(tiny_args(tmp_path / "eyes", "vae", tiny_init, mouth_weight=10.0, eye_weight=30.0,
                             batch_size=3))
    weight = both.objective.make_batch(both, *step_generators(both.args, 0, 0))["weight"]
    # The same clips: the mouth box keeps its weight, and two eye boxes above it get theirs.
    assert ((weight == 11.0) == (batch["weight"] == 11.0)).all()
    eyes = (weight == 31.0).float()
    assert 0.005 < eyes.mean() < 0.1
    rows = eyes[0, 0, 0].nonzero()[:, 0]
    assert rows.float().mean() < (batch["weight"][0, 0, 0] > 1).nonzero()[:, 0].float().mean()
    plain = Trainer(tiny_args(tmp_path / "plain", "vae", tiny_init, batch_size=3))
    batch = plain.objective.make_batch(plain, *step_generators(plain.args, 0, 0))
    assert torch.equal(batch["weight"], torch.ones_like(batch["weight"]))


class _Reached(Exception):
    pass


@pytest.mark.parametrize("stage", ["vae", "speech"])
def test_the_batch_goes_to_the_training_device(tmp_path, tiny_init, stage, monkeypatch):
    """Batches are drawn on the CPU; on a GPU without a DDP wrapper (one process, or FSDP) the
    objective must still get them on the model's device. The meta device stands in for a GPU."""
    trainer = Trainer(tiny_args(tmp_path, stage, tiny_init))
    trainer.device = torch.device("meta")
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())
    seen = []

    def record(batch):
        seen.extend(v.device.type for v in batch.values())
        raise _Reached

    trainer.wrapped = record
    with pytest.raises(_Reached):
        trainer.train_step()
    assert seen and set(seen) == {"meta"}


def test_batch_to_walks_the_noisy_clip():
    from reference.asd import NoisyClip
    from reference.train import batch_to
    clip = NoisyClip(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.bool))
    moved = batch_to({"clip": clip}, torch.device("meta"))["clip"]
    assert moved.z_t.is_meta and moved.drop.is_meta and moved.text is None


def test_resume_recovers_a_save_killed_between_its_renames(tmp_path, tiny_init):
    trainer = Trainer(tiny_args(tmp_path, "teacher", tiny_init, steps=4))
    trainer.train_step()
    trainer.train_step()
    trainer.save()
    latest = trainer.latest
    latest.rename(latest.with_name(".latest.old-12345"))  # killed right after the first rename
    resumed = Trainer(tiny_args(tmp_path, "teacher", tiny_init, steps=4, resume=True))
    assert resumed.step == 2 and latest.is_dir()


def test_resume_does_not_log_a_step_twice(tmp_path, tiny_init):
    train(tiny_args(tmp_path, "teacher", tiny_init, steps=3, save_every=2))
    state = tmp_path / "teacher" / "latest" / "train_state.pt"
    saved = torch.load(state, weights_only=False)
    saved["step"] = 2                       # as if killed after logging step 3, before saving it
    torch.save(saved, state)
    with open(tmp_path / "teacher" / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')          # and mid-way through a line
    train(tiny_args(tmp_path, "teacher", tiny_init, steps=3, save_every=2, resume=True))
    log = [json.loads(line) for line in (tmp_path / "teacher" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_student_starts_from_the_teacher_which_stays_frozen(tmp_path, tiny_init):
    teacher_dir = train(tiny_args(tmp_path, "teacher", tiny_init, steps=1))
    trainer = Trainer(tiny_args(tmp_path, "student", teacher_dir, steps=1))
    teacher = trainer.objective.teacher_dit
    start = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(torch.equal(v, trainer.model.dit.state_dict()[k]) for k, v in start.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    trainer.train_step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in start.items())
    assert not all(torch.equal(v, trainer.model.dit.state_dict()[k]) for k, v in start.items())
    # The student reads the audio as its teacher did: the statistics are inherited, not re-measured.
    teacher_model = load_checkpoint(teacher_dir)
    assert torch.equal(trainer.model.audio_whiten, teacher_model.audio_whiten)


def test_teacher_stage_whitens_the_audio_tokens_it_trains_on(tmp_path, tiny_init):
    trainer = Trainer(tiny_args(tmp_path, "teacher", tiny_init, steps=1))
    model = trainer.model
    assert not torch.equal(model.audio_whiten, torch.eye(model.cfg.speech.audio_dim))
    with torch.no_grad():
        tokens = model.speech_tokens(trainer.pool.whisper_frames()).flatten(0, -2).double()
    assert tokens.mean(0).abs().max() < 1e-4
    eigvals = torch.linalg.eigvalsh(torch.cov(tokens.T))
    assert eigvals.max() == pytest.approx(1.0, abs=1e-3)   # every direction the data spans at unit scale
    # Resuming keeps the statistics the run saved (marked here so a re-measure would show).
    weights = train(tiny_args(tmp_path, "teacher", tiny_init, steps=1)) / "model.safetensors"
    state = load_file(str(weights))
    state["audio_whiten"] = 2 * torch.eye(model.cfg.speech.audio_dim)
    save_file(state, str(weights))
    resumed = Trainer(tiny_args(tmp_path, "teacher", tiny_init, steps=2, resume=True))
    assert torch.equal(resumed.model.audio_whiten, 2 * torch.eye(model.cfg.speech.audio_dim))
    # So does a teacher fine-tuned from that one (its weights learned with that whitening).
    tuned = Trainer(tiny_args(tmp_path, "teacher", tmp_path / "teacher", out=str(tmp_path / "tuned"), steps=1))
    assert torch.equal(tuned.model.audio_whiten, 2 * torch.eye(model.cfg.speech.audio_dim))


def test_a_short_chunk_student_trains_from_a_three_frame_checkpoint(tmp_path, tiny_init):
    """tools/train_low_latency_weights.sh's first stage at the tiny preset: a checkpoint of
    3-frame chunks re-windowed to 1 frame and W = 3 by overrides, its pool encoded again (the
    Whisper windows differ) with 12 chunks a clip; too few chunks a training clip is refused."""
    window = ["chunk_latent_frames=1", "prev_chunks=3", "speech.left_context_frames=48",
              "asd.lambda_con=0", "asd.lambda_smo=0"]
    with pytest.raises(ValueError, match="--num-chunks 3 is too few .* at least 4"):
        Trainer(tiny_args(tmp_path / "few", "student", tiny_init, num_chunks=3, overrides=window))
    out = train(tiny_args(tmp_path, "student", tiny_init, num_chunks=4, cache_chunks=None, overrides=window))
    cfg = load_checkpoint(out).cfg
    assert (cfg.chunk_latent_frames, cfg.prev_chunks, cfg.speech.left_context_frames) == (1, 3, 48)
    pools = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".safetensors")
    assert len(pools) == 1
    from safetensors import safe_open
    with safe_open(str(tmp_path / "cache" / pools[0]), "pt") as f:
        assert f.get_slice("latents").get_shape()[2] == 1 + 12     # 12 chunks of 1 latent frame
