"""The training loop for REST's four stages, on one process or many (DDP or FSDP via torchrun).

    vae      causal video VAE: L1 + motion (frame-difference) L1 + KL; measures latent statistics
    speech   SpeechAE on the frozen Whisper encoder: reconstruct the Whisper frames (eq. 6)
    teacher  A2V-DiT, full attention, asynchronous noise, condition dropout (eq. 15-18)
    student  ASD: streaming student initialised from the teacher, L_S + L_CON + L_SMO (eq. 19-24)
    decoder  the light streaming decoder, distilled from the full one (not in the paper)
    distill  a K-step one-branch sampler from a student: guidance, then progressive step
             distillation, one phase after another, and/or distribution matching (DMD) on the
             student's own rollouts (reference/distill.py; not in the paper)

What each stage computes lives in reference/objectives.py; this module is the loop around them.

Each stage starts from the previous stage's checkpoint (``init``) and writes a full model
checkpoint, so any stage's output loads in ``rest-fast generate``. A run directory holds

    latest/      config.json + model.safetensors + train_state.pt (optimizer, step), atomic
    step-N/      snapshots every ``snapshot_every`` steps (weights only)
    log.jsonl    one line per ``log_every`` steps
    args.json    the arguments of the first launch

Every random draw of step s comes from generators seeded with (seed, s, rank), so a resumed run
continues bit-exactly where it stopped (on the same device and world size).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import load_checkpoint, recover_interrupted_save, save_checkpoint
from .config import ProvenanceConfig, RestConfig, get_config
from .data import Clip
from .model import RestModel
from .distill import DistillObjective, DMDObjective, distill_phases
from .flow import check_guidance_scale
from .objectives import DecoderObjective, DiTObjective, SpeechObjective, VAEObjective
from .speech import chunk_windows

STAGES = ("vae", "speech", "teacher", "student", "decoder", "distill")
LIGHT_WIDTH = 16                    # the light decoder's width at the top resolution, unless the config says


@dataclass
class TrainArgs:
    stage: str
    out: str
    data: str = "synthetic"           # "synthetic" (calm), "synthetic-lively" or a folder of mp4 clips
    preset: str = "cpu"               # used only when there is no init checkpoint
    init: str | None = None           # checkpoint of the previous stage
    teacher: str | None = None        # student: the frozen teacher (default: init)
    steps: int = 1000
    batch_size: int = 4               # per process
    lr: float = 2e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1         # cosine decay to lr * this at the last step
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    num_chunks: int = 2               # chunks per training clip (DiT stages)
    vae_frames: int = 9               # frames per VAE training clip (1 + 8k; 1: single images)
    crop: int = 0                     # decoder: latent positions per side of random crops (0: whole)
    sampler_steps: int = 2            # distill: the steps of the last phase's sampler
    distill_method: str = "progressive"  # distill: "progressive", "dmd" or "progressive+dmd"
    distill_kind: str = ""            # distill: the phase ("guidance", "steps" or "dmd"; set by distill())
    guidance_scale: float | None = None  # distill: the alpha the guidance phase distils and DMD's
                                         # real score uses (default: the teacher's)
    fake_updates: int = 1             # distill, DMD: fake-score updates per student update
    mouth_weight: float = 0.0         # VAE: extra loss weight inside the mouth box, where data knows it
    eye_weight: float = 0.0           # VAE: extra loss weight inside each eye's box, where data knows it
    cache_dir: str | None = None      # latent pool (DiT stages); default <out>/../cache
    cache_clips: int = 512
    cache_chunks: int | None = None   # chunks per pool clip; default 12 latent frames' worth (3.84 s)
    save_every: int = 200
    snapshot_every: int = 0
    log_every: int = 10
    resume: bool = False
    bf16: bool = False                # autocast matmuls to bfloat16
    fsdp: bool = False                # shard the trained module (FSDP2) instead of replicating (DDP)
    grad_checkpoint: bool = False     # recompute DiT blocks in backward
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)   # "asd.lambda_con=0", "dit.student_sink=false"
    progress: bool = True


# --------------------------------------------------------------------------------------------
# Data: everything a step draws comes from generators seeded by (seed, step, rank)
# --------------------------------------------------------------------------------------------


SYNTHETIC_DATA = {"synthetic": "calm", "synthetic-lively": "lively",    # --data -> motion
                  "synthetic-restless": "restless"}


def open_dataset(args: TrainArgs, cfg: RestConfig, num_chunks: int):
    if args.data in SYNTHETIC_DATA:
        from .data.synthetic import SyntheticTalkingHeads
        return SyntheticTalkingHeads.for_config(cfg, num_chunks=num_chunks, seed=args.seed,
                                                motion=SYNTHETIC_DATA[args.data])
    from .data.folder import FolderDataset
    return FolderDataset(args.data, cfg, num_chunks=num_chunks)


def step_generators(args: TrainArgs, step: int, rank: int) -> tuple[torch.Generator, np.random.Generator]:
    seed = (args.seed * 1_000_003 + step) * 1009 + rank
    return torch.Generator().manual_seed(seed), np.random.default_rng(seed)


def batch_to(batch, device: torch.device):
    """The batch's tensors on ``device`` (dicts and dataclasses such as NoisyClip walked). Batches
    are drawn on the CPU (reproducible anywhere); without this the VAE and speech stages fed CPU
    tensors to a model on the GPU whenever no DDP wrapper moved them (one GPU, or FSDP)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: batch_to(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def apply_overrides(cfg: RestConfig, overrides: list[str]) -> RestConfig:
    """``section.field=value`` edits of a config, e.g. ``asd.lambda_con=0``."""
    d = cfg.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value (e.g. asd.lambda_con=0)")
        *path, name = key.strip().split(".")
        node = d
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: no config section {part!r}")
            node = node[part]
        if name not in node:
            raise ValueError(f"override {item!r}: no config field {name!r} in {'.'.join(path) or 'the config'}")
        old = node[name]
        if isinstance(old, bool):
            value = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(old, tuple):   # widths: "48,32,24,16" (empty for none)
            value = tuple(int(x) for x in raw.split(",") if x.strip())
        else:
            value = type(old)(raw) if old is not None else json.loads(raw)
        node[name] = value
    return RestConfig.from_dict(d)


class Backend:
    """What computes the DiT stages (teacher, student, distill): here plain PyTorch, the
    specification. ``rest_fast.training.KernelBackend`` (``rest-fast train --kernels on``) routes
    the same models through fused kernels; the reference never imports it and only calls these
    two methods."""
    name = "reference"              # written into every log line as "dit_ops"

    def prepare(self, models: list[nn.Module]) -> None:
        """Called once with the trained model, the frozen teacher and the objective's auxiliary
        module (DMD's fake score), those that exist."""

    def step(self):
        """A context for each training step (forward and backward)."""
        return contextlib.nullcontext()


DIT_STAGES = ("teacher", "student", "distill")
POOL_LATENT_FRAMES = 12   # a pool clip's length after z_R, whatever the chunk: 4 chunks of 3, 12 of 1
AUXILIARY_NAME = "auxiliary.pt"   # beside train_state.pt: the objective's auxiliary module (DMD's fake score)


class Trainer:
    def __init__(self, args: TrainArgs, backend: Backend | None = None):
        if args.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {args.stage!r}")
        self.args = args
        self.rank, self.world, self.device = setup_distributed(args.device)
        self.out = Path(args.out)
        self.latest = self.out / "latest"
        self.step = 0

        if args.resume:
            if self.rank == 0:
                recover_interrupted_save(self.latest)
            if self.world > 1:
                dist.barrier()
        resuming = args.resume and (self.latest / "train_state.pt").is_file()
        if args.resume and not resuming and self.rank == 0:
            print(f"rest-fast train: nothing to resume in {self.out}; starting fresh", file=sys.stderr)
        if resuming:
            model = load_checkpoint(self.latest)
        elif args.init:
            model = load_checkpoint(args.init)
            cfg = apply_overrides(model.cfg, args.overrides)
            if args.stage == "decoder":   # the init's weights plus a light decoder that renders
                cfg = dataclasses.replace(cfg, vae=dataclasses.replace(
                    cfg.vae, decoder="light", light_width=cfg.vae.light_width or LIGHT_WIDTH)).validate()
            if cfg != model.cfg:
                model = rebuild_with_config(model, cfg, seed=args.seed)
        else:
            if args.stage == "decoder":
                raise ValueError("the decoder stage distils the light decoder from a trained VAE: "
                                 "pass --init (a checkpoint of the vae stage or later)")
            if args.stage in ("teacher", "student"):
                print(f"rest-fast train: {args.stage} without --init starts from random VAE and "
                      "SpeechAE weights", file=sys.stderr)
            model = RestModel.random(apply_overrides(get_config(args.preset), args.overrides), args.seed)
        self.model = model.to(self.device).train()
        self.cfg = model.cfg
        ts = self.cfg.vae.temporal_compression
        if args.vae_frames < 1 or (args.vae_frames - 1) % ts:
            raise ValueError(f"--vae-frames must be 1 + {ts}k (1, {1 + ts}, {1 + 2 * ts}, ...), "
                             f"got {args.vae_frames}")
        if args.stage in ("student", "distill") and args.num_chunks <= self.cfg.prev_chunks:
            # Chunk i of a clip sees min(i, W) previous chunks: with W or fewer chunks a clip, no
            # chunk is trained on the full window that every chunk of a stream reads after the W-th.
            raise ValueError(f"--num-chunks {args.num_chunks} is too few for a student whose cache keeps "
                             f"prev_chunks = {self.cfg.prev_chunks} chunks: pass at least "
                             f"{self.cfg.prev_chunks + 1}")
        teacher = None
        if args.stage in ("student", "distill"):
            teacher_dir = args.teacher or args.init
            if teacher_dir is None:
                raise ValueError(f"the {args.stage} stage needs a teacher: pass --init (or --teacher)")
            teacher = load_checkpoint(teacher_dir).to(self.device).eval().requires_grad_(False)
        self.objective = self.build_objective(teacher)
        # What the DiT's weights are made for once this stage has trained them (config.json).
        model.cfg.provenance = provenance_after(args, model.cfg, self.objective, teacher)
        self.trained = {"vae": model.vae, "speech": model.speech_ae,
                        "decoder": model.vae.light_decoder}.get(args.stage, model.dit)
        # A module the objective trains beside the model but that is not part of the checkpoint
        # (DMD's fake score): optimised with it, kept in the train state so a run resumes.
        self.auxiliary = getattr(self.objective, "auxiliary", None)
        self.backend = backend if backend is not None and args.stage in DIT_STAGES else Backend()
        self.backend.prepare([m for m in (model, teacher, self.auxiliary) if m is not None])
        if self.rank == 0 and args.stage in DIT_STAGES and args.progress:
            print(f"rest-fast train: {args.stage}: DiT ops: {self.backend.name}", file=sys.stderr)
        if resuming and self.auxiliary is not None:   # before sharding: full weights in
            self.load_auxiliary()
        self.model.requires_grad_(False)
        self.trained.requires_grad_(True)
        if args.grad_checkpoint:
            for dit in (model.dit, self.auxiliary):
                if dit is not None:
                    dit.gradient_checkpointing = True
        self.wrapped = self.wrap(self.objective)
        self.params = [p for m in (self.trained, self.auxiliary) if m is not None
                       for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=args.weight_decay,
                                           betas=(0.9, 0.99))
        if resuming:
            self.load_train_state()
        self.pool = self.open_pool() if args.stage in ("teacher", "student", "decoder", "distill") else None
        if args.stage == "teacher" and not resuming and not self.model.audio_stats_measured():
            # The DiT's audio input is whitened with the statistics of the data it trains on,
            # fixed from here on: a teacher fine-tuned from a teacher keeps the whitening its
            # weights learned with, and the student inherits it with the teacher's weights.
            self.model.measure_audio_stats(self.pool.whisper_frames().to(self.device))
        self.dataset = open_dataset(args, self.cfg, 1) if args.stage in ("vae", "speech") else None

    def build_objective(self, teacher):
        stage = self.args.stage
        if stage == "vae":
            return VAEObjective(self.model)
        if stage == "speech":
            return SpeechObjective(self.model)
        if stage == "decoder":
            return DecoderObjective(self.model)
        if stage == "distill" and self.args.distill_kind == "dmd":
            return DMDObjective(self.model, teacher, self.args.guidance_scale, self.args.fake_updates)
        if stage == "distill":
            return DistillObjective(self.model, teacher, self.args.distill_kind, self.args.guidance_scale)
        return DiTObjective(self.model, teacher)

    def wrap(self, objective: nn.Module) -> nn.Module:
        if self.world == 1:
            return objective
        if self.args.fsdp:
            from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
            for module in (self.trained, self.auxiliary):
                if module is None:
                    continue
                for block in getattr(module, "blocks", []):
                    fully_shard(block)
                fully_shard(module)
                for method in ("forward_teacher", "forward_student", "encode_dist", "decode", "encode"):
                    if hasattr(module, method):  # entry points other than forward() gather too
                        register_fsdp_forward_method(module, method)
            # Gradients of every rank's shard are reduced by FSDP itself; the objective is the
            # same module on every rank.
            return objective
        from torch.nn.parallel import DistributedDataParallel
        # DMD's fake-score-only steps leave the student without gradients.
        return DistributedDataParallel(objective,
                                       device_ids=[self.device] if self.device.type == "cuda" else None,
                                       find_unused_parameters=self.auxiliary is not None)

    # ---- data --------------------------------------------------------------------------------
    def open_pool(self):
        from .data.latents import LatentClips
        cache = Path(self.args.cache_dir) if self.args.cache_dir else self.out.parent / "cache"
        chunks = self.args.cache_chunks or max(POOL_LATENT_FRAMES // self.cfg.chunk_latent_frames, 1)
        dataset = open_dataset(self.args, self.cfg, chunks)
        data_key = json.dumps([self.args.data, getattr(dataset, "version", None), self.args.seed,
                               chunks, self.cfg.resolution])
        if self.rank == 0:  # one process encodes; the others wait and read the file
            with torch.no_grad():
                self.model.eval()
                pool = LatentClips.cached(self.model, dataset, self.args.cache_clips, cache, data_key,
                                          self.device, self.args.progress)
                self.model.train()
        if self.world > 1:
            dist.barrier()
            if self.rank != 0:
                pool = LatentClips.cached(self.model, dataset, self.args.cache_clips, cache, data_key,
                                          self.device, False)
        return pool

    def random_frames(self, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, Clip]:
        """``frames`` consecutive frames of a random clip (the first one encoded alone), and the
        clip they come from (its mouth and eye boxes where the data knows them)."""
        ds = self.dataset
        index = int(rng.integers(len(ds)))
        if hasattr(ds, "clip"):  # synthetic: render only what is needed
            start = int(rng.integers(0, 48))
            clip = ds.clip(index, frames, start=start)
            return clip.frames, clip
        clip = ds[index]
        video = np.concatenate([clip.reference[None], clip.frames])
        start = int(rng.integers(0, len(video) - frames + 1))
        return video[start:start + frames], clip

    def random_window(self, rng: np.random.Generator) -> torch.Tensor:
        """The bounded Whisper window of a random chunk of a random clip's speech."""
        ds = self.dataset
        index = int(rng.integers(len(ds)))
        if hasattr(ds, "speech"):
            audio = ds.speech(index, 3 * self.cfg.frames_per_chunk / self.cfg.fps)
        else:
            audio = ds[index].audio
        chunks = max(1, len(audio) // self.cfg.samples_per_chunk)
        chunk = int(rng.integers(chunks))
        return chunk_windows(torch.from_numpy(audio), self.cfg, chunk, 1)[0]

    # ---- the loop ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        a = self.args
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        progress = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    def shared_generator(self) -> torch.Generator:
        """A generator seeded by the step alone, the same on every rank: for draws that decide
        how many forwards a step makes (FSDP gathers shards in each, so the ranks must agree)."""
        return step_generators(self.args, self.step, rank=0)[0]

    def train_step(self) -> dict:
        step_gen, rng = step_generators(self.args, self.step, self.rank)
        batch = batch_to(self.objective.make_batch(self, step_gen, rng), self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)
        with self.backend.step():
            with autocast:
                loss, logs = self.wrapped(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}: lower --lr or use fp32")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.args.grad_clip:
            # Each trained module clipped on its own: the fake score's gradients must not
            # shrink the student's step.
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trained.parameters(), self.args.grad_clip))
            if self.auxiliary is not None:
                logs["grad_norm_auxiliary"] = float(torch.nn.utils.clip_grad_norm_(
                    self.auxiliary.parameters(), self.args.grad_clip))
        self.optimizer.step()
        self.step += 1
        return logs

    def run(self) -> Path:
        a = self.args
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (self.out / "args.json").exists():
                (self.out / "args.json").write_text(json.dumps(dataclasses.asdict(a), indent=2))
            self.trim_log()
        bar = None
        if a.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=a.steps, initial=self.step, desc=f"train {a.stage}", unit="step")
        samples = a.batch_size * self.world
        tick = time.perf_counter()
        try:
            while self.step < a.steps:
                logs = self.train_step()
                now = time.perf_counter()
                logs["samples_per_s"] = samples / (now - tick)
                tick = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", sps=f"{logs['samples_per_s']:.1f}")
                if self.step % a.log_every == 0 or self.step == a.steps:
                    self.log(logs)
                if self.step % a.save_every == 0 or self.step == a.steps:
                    self.save()
                if a.snapshot_every and self.step % a.snapshot_every == 0:
                    self.save(self.out / f"step-{self.step}", with_state=False)
        except KeyboardInterrupt:
            if self.world == 1:
                self.save()
                print(f"\nrest-fast train: interrupted at step {self.step}; saved {self.latest} "
                      "(continue with --resume)", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.latest

    def trim_log(self) -> None:
        """Drop log lines past the step we resume from: the steps after the last save are run
        again, and would otherwise be logged twice."""
        path = self.out / "log.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _log_step(line) <= self.step]
        if len(kept) != len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)

    def log(self, logs: dict) -> None:
        logs = dict(logs, step=self.step, lr=self.lr_at(self.step - 1), time=time.time(),
                    dit_ops=self.backend.name)
        if self.world > 1:
            loss = torch.tensor([logs["loss"]], device=self.device)
            dist.all_reduce(loss)
            logs["loss"] = loss.item() / self.world
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(logs) + "\n")

    # ---- checkpoints -------------------------------------------------------------------------
    def full_state_dict(self, module: nn.Module | None = None) -> dict:
        """The whole model's (or ``module``'s) weights on every rank (FSDP shards are gathered:
        a collective)."""
        state = {}
        for k, v in (module or self.model).state_dict().items():
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()
            state[k] = v.detach().cpu()
        return state

    def save(self, directory: Path | None = None, with_state: bool = True) -> None:
        directory = directory or self.latest
        if self.args.stage == "vae":
            measure_latent_stats(self.model, self)
        state = self.full_state_dict()
        auxiliary = None
        if self.auxiliary is not None and with_state:   # gathered on every rank, as the model's
            auxiliary = self.full_state_dict(self.auxiliary)
        opt_state = self.optimizer.state_dict() if with_state else None
        shards = [None] * self.world
        if self.world > 1 and self.args.fsdp and with_state:
            dist.all_gather_object(shards, opt_state)
        if self.rank == 0:
            extra = {}
            if with_state:
                extra["train_state.pt"] = {
                    "step": self.step, "stage": self.args.stage, "world": self.world,
                    "optimizer": shards if self.args.fsdp and self.world > 1 else opt_state,
                    "torch_rng": torch.get_rng_state()}
                if auxiliary is not None:
                    extra[AUXILIARY_NAME] = auxiliary
            save_checkpoint(self.model, directory, state=state, extra=extra)
        if self.world > 1:
            dist.barrier()

    def load_auxiliary(self) -> None:
        path = self.latest / AUXILIARY_NAME
        if not path.is_file():   # save_checkpoint writes it with the rest: only a hand-edited run lacks it
            raise ValueError(f"{path} is missing, so the {self.args.stage} stage cannot resume its "
                             f"{type(self.auxiliary).__name__} (DMD's fake score); restore it, or start "
                             "again without --resume in a new --out")
        self.auxiliary.load_state_dict(torch.load(path, map_location=self.device))

    def load_train_state(self) -> None:
        state = torch.load(self.latest / "train_state.pt", map_location="cpu", weights_only=False)
        if state["stage"] != self.args.stage:
            raise ValueError(f"{self.latest} was written by stage {state['stage']!r}, not {self.args.stage!r}")
        if state["world"] != self.world:
            raise ValueError(f"{self.latest} was written by {state['world']} processes; resume with as many")
        optimizer = state["optimizer"]
        if isinstance(optimizer, list):
            optimizer = optimizer[self.rank]
        self.optimizer.load_state_dict(optimizer)
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]


def _log_step(line: str) -> float:
    """The step of a log.jsonl line; inf for a line cut short by a kill (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


@torch.no_grad()
def measure_latent_stats(model: RestModel, trainer: Trainer, clips: int = 8) -> None:
    """Per-channel mean and std of the VAE latents over a fixed set of clips: the DiT works on
    (z - mean) / std."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(12345)
    zs = []
    for _ in range(clips):
        video = torch.from_numpy(trainer.random_frames(rng, 17)[0]).permute(3, 0, 1, 2)[None]
        zs.append(model.vae.encode(video.to(trainer.device).float() / 127.5 - 1.0))
    z = torch.cat(zs).transpose(0, 1).flatten(1)
    model.latent_mean.copy_(z.mean(1))
    model.latent_std.copy_(z.std(1).clamp_min(1e-3))
    model.train(was_training)


def rebuild_with_config(model: RestModel, cfg: RestConfig, seed: int = 0) -> RestModel:
    """The same weights under an edited config. Overrides change behaviour, never the shapes of
    existing weights; the one module a config may add is the light decoder (vae.light_width),
    which starts from its initialisation (seeded: a run and its restart start alike)."""
    new = RestModel.random(cfg, seed)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    added = [k for k in missing if not k.startswith("vae.light_decoder.")]
    if added or unexpected:
        raise ValueError(f"the edited config does not fit the checkpoint's weights: missing "
                         f"{added[:5]}, unexpected {unexpected[:5]}")
    return new


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Single process, or the process group torchrun describes (NCCL on GPU, gloo on CPU)."""
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_initialized():
            # Rank 0 encodes the latent pool while the others wait in a barrier: NCCL's default
            # 10 min timeout is shorter than that takes for the paper preset.
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return dist.get_rank(), world, device
    return 0, 1, torch.device("cuda" if cuda else "cpu")


def provenance_after(args: TrainArgs, cfg: RestConfig, objective, teacher) -> ProvenanceConfig:
    """How the DiT's weights are made once this stage trains them, which decides the samplers
    they serve (reference.pipeline.untrained_sampler): the teacher and student stages train with
    condition dropout, so every CFG branch; a distillation phase folds its teacher's guidance
    into one branch of ``sampling.steps`` steps; the other stages leave the DiT as it was."""
    stage, kind, before = args.stage, args.distill_kind, cfg.provenance
    if stage in ("teacher", "student"):
        return ProvenanceConfig(kind="guidance_dropout")
    if stage != "distill":
        return before
    if kind == "steps":      # halving the steps of the previous phase, its guidance kept
        method, scale = "progressive", teacher.cfg.provenance.guidance_scale
    elif kind == "dmd":      # the student's own rollouts matched to the Joint-CFG teacher's
        method = "progressive+dmd" if before.method.startswith("progressive") else "dmd"
        scale = objective.alpha
    else:                    # "guidance": the teacher's Joint CFG into one branch
        method, scale = "progressive", objective.alpha
    return ProvenanceConfig(kind="distilled", method=method, steps=cfg.sampling.steps, guidance_scale=scale)


def distill(args: TrainArgs, backend: Backend | None = None) -> Path:
    """The distill stage: a run of ``args.steps`` optimizer steps per phase (distill_phases),
    each in its own run directory ``<out>/k<steps>`` (``<out>/dmd<steps>`` for distribution
    matching) that resumes like any stage. A progressive phase starts from (and is taught by)
    the last one; the DMD phase starts from the last one and is taught by ``--teacher`` (default
    the init: the Joint-CFG student). Returns the last phase's checkpoint."""
    from .checkpoint import load_config
    if not args.init:
        raise ValueError("the distill stage needs --init: a trained student (Joint CFG)")
    steps = load_config(args.init).sampling.steps
    if args.guidance_scale is not None:     # refused now, not after the pool is encoded
        check_guidance_scale(args.guidance_scale, "the distilled guidance scale")
    phases = distill_phases(steps, args.sampler_steps, args.distill_method)
    previous, out, real_score = args.init, Path(args.out), args.teacher or args.init
    if phases[0][0] == "dmd" and load_config(real_score).sampling.cfg_mode != "joint":
        raise ValueError(f"distribution matching needs a Joint-CFG teacher (the real score); "
                         f"{real_score} samples without: pass --teacher, the student it was distilled from")
    for kind, k in phases:
        phase = dataclasses.replace(
            args, stage="distill", distill_kind=kind, init=str(previous),
            out=str(out / f"{'dmd' if kind == 'dmd' else 'k'}{k}"),
            teacher=str(real_score if kind == "dmd" else previous),
            cache_dir=args.cache_dir or str(out.parent / "cache"),  # <out>/../cache, as every stage
            overrides=list(args.overrides) + [f"sampling.steps={k}", "sampling.cfg_mode=none"])
        if args.progress:
            print(f"rest-fast train distill: {kind} phase to {k} step(s), one branch -> {phase.out}",
                  file=sys.stderr)
        previous = train(phase, backend)
    return Path(previous)


def train(args: TrainArgs, backend: Backend | None = None) -> Path:
    """Run one stage; ``backend`` computes the DiT stages (default: the reference's ops)."""
    if args.stage == "distill" and not args.distill_kind:
        return distill(args, backend)
    trainer = Trainer(args, backend)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
