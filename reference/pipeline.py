"""Algorithm 1: AR-style streaming inference with the ID-Context Cache.

One stream = one portrait. Once per stream the reference image is encoded to z_R and run through
every block at t = 0 (the ID sink, per CFG branch). Then, per chunk of c latent frames
(= 8c video frames = 0.96 s at the paper's settings):

    audio window -> Whisper -> SpeechAE -> E_i                        (eq. 5-6)
    Z_i <- eps_i;  for j in 1..n:  v = CFG(S(Z_i, E_i, T_j, cache_j)); Z_i += (T_{j+1} - T_j) v
    frames <- streaming causal VAE decode of Z_i                     (eq. 4)

Context caches (``cache_mode``): ``per_step`` (default) keeps one cache per denoising step j,
holding the previous W chunks' K/V from their own step j (W = ``cfg.prev_chunks``, the paper's
1); the step-j forward of chunk i adds chunk i's and drops the oldest. ``clean`` keeps one cache,
filled by an extra forward of the finished chunk at t = 0.

Timeline: output frame n shows time n / fps. ``generate`` makes ceil(samples / samples_per_frame)
frames; a partial last chunk is generated in full with silence after the audio's end and the
surplus frames are dropped.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .config import GUIDANCE_BRANCHES, RestConfig
from .dit import push_context
from .flow import check_guidance_scale, euler_step, guide, timestep_schedule
from .model import RestModel, video_tensor_to_uint8
from .speech import chunk_windows


def frames_for_samples(num_samples: int, cfg: RestConfig) -> int:
    """Video frames that cover ``num_samples`` of audio (frame n shows time n / fps)."""
    return math.ceil(num_samples / cfg.samples_per_frame)


class SamplerError(ValueError):
    """A sampler the checkpoint's weights were not made for (it would draw noise, not faces)."""


def sampler_settings(cfg: RestConfig, steps: int | None = None, cfg_mode: str | None = None,
                     cfg_scale: float | None = None, force: bool = False,
                     source: str | None = None) -> tuple[int, str, float]:
    """(steps, guidance mode, Joint-CFG scale): the checkpoint's sampler with the caller's
    overrides, checked. A scale needs a guided mode: with ``cfg_mode="none"`` only the
    conditional branch exists, so a scale other than 1 is refused rather than ignored. A sampler
    the weights were not made for (:func:`untrained_sampler`) raises :class:`SamplerError`, or,
    with ``force``, runs with a warning; ``source`` names the checkpoint in that message."""
    s = cfg.sampling
    steps = s.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    mode = cfg_mode or s.cfg_mode
    if mode not in GUIDANCE_BRANCHES:
        raise ValueError(f"guidance must be one of {sorted(GUIDANCE_BRANCHES)}, not {mode!r}")
    scale = s.cfg_scale if cfg_scale is None else check_guidance_scale(cfg_scale)
    if mode == "none" and cfg_scale is not None and scale != 1.0:
        raise ValueError(f"a CFG scale ({scale:g}) needs guidance, but this sampler runs without "
                         "(cfg_mode 'none': one branch): ask for cfg_mode 'joint' too, or drop the scale")
    problem = untrained_sampler(cfg, steps, mode, scale)
    if problem:
        where = f"checkpoint {source!r}" if source else "this checkpoint"
        if not force:
            raise SamplerError(f"{where} {problem}; to run it anyway: --force (force=True in the API)")
        warnings.warn(f"{where} {problem}; running it anyway (forced): expect noise, not faces",
                      stacklevel=2)
    return steps, mode, scale


def untrained_sampler(cfg: RestConfig, steps: int, mode: str, scale: float) -> str | None:
    """Why the weights cannot serve this sampler, or None. A distilled student learnt its steps
    of one branch with guidance folded in (``cfg.provenance``): its unconditional branch is no
    longer what classifier-free guidance needs, so Multi CFG, Joint CFG above the scale it was
    checked at, and more steps than it learnt draw noise (fewer steps blur, but stay faces)."""
    p = cfg.provenance
    if p.kind != "distilled":
        return None
    asked = []
    if steps > p.steps:
        asked.append(f"{steps} steps")
    if mode == "multi":
        asked.append("Multi CFG")
    elif mode == "joint" and scale > p.joint_scale_checked:
        asked.append(f"Joint CFG at scale {scale:g}")
    if not asked:
        return None
    method = f", by {p.method}" if p.method else ""
    checked = (f"; Joint CFG on top of it holds up to scale {p.joint_scale_checked:g}"
               if p.joint_scale_checked > 1 else "")
    return (f"is distilled to {p.steps} step(s) of one branch (Joint CFG {p.guidance_scale:g} folded in"
            f"{method}{checked}): an undistilled student is needed for {' and '.join(asked)} (the "
            "package bundles one: --checkpoint undistilled)")


def branch_references(z_ref: Tensor, branches: int) -> list[Tensor]:
    """z_R per CFG branch: the "neither" branch of multi-CFG loses it (a zero latent)."""
    return [z_ref] * min(branches, 2) + [torch.zeros_like(z_ref)] * (branches == 3)


class ReferenceStream:
    """The state of one stream: sink K/V, context caches, noise generator and decoder state.

    Branches of classifier-free guidance are stacked along the batch dimension:
    none: [conditional]; joint: [conditional, unconditional]; multi: [full, reference only, neither].
    """

    def __init__(self, model: RestModel, image: np.ndarray, seed: int = 0,
                 text: Tensor | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, cfg_mode: str | None = None, force: bool = False):
        self.model, self.cfg = model, model.cfg
        s = self.cfg.sampling
        self.steps, self.cfg_mode, self.cfg_scale = sampler_settings(
            self.cfg, steps, cfg_mode, cfg_scale, force=force, source=model.source)
        self.schedule = timestep_schedule(self.steps, s.shift).tolist()
        self.device = model.latent_mean.device
        self.generator = torch.Generator().manual_seed(seed)  # CPU generator: same noise on any device
        self.chunk_index = 0

        dit = model.dit
        z_ref = model.encode_reference(image)
        self.branches = GUIDANCE_BRANCHES[self.cfg_mode]
        z_refs = branch_references(z_ref, self.branches)
        self.text = self.branch_text(text)
        self.sink_kv = dit.sink_kv(torch.cat(z_refs), self.text)
        num_caches = self.steps if s.cache_mode == "per_step" else 1
        self.caches: list[list | None] = [None] * num_caches

        # The causal decoder starts its sequence with z_R; that first frame is the reference
        # reconstruction and is not output.
        self.decode_state = model.vae.new_decode_state()
        model.vae.decode_stream(model.denormalize(z_ref), self.decode_state)

    def branch_text(self, text: Tensor | None) -> Tensor | None:
        """Text per CFG branch: the given text for the conditional branch, null text for the
        others. None (null text everywhere) when no text is given."""
        if text is None:
            return None
        null_text = self.model.dit.null_text
        if tuple(text.shape[-2:]) != tuple(null_text.shape):
            # Branches are batched, so the conditional text must have the null text's length.
            raise ValueError(f"text embeddings must be {tuple(null_text.shape)} "
                             f"(text_tokens, text_dim); got {tuple(text.shape)}")
        cond = text.to(self.device, null_text.dtype).reshape(1, *null_text.shape)
        return torch.cat([cond] + [null_text[None]] * (self.branches - 1))

    # ---- one chunk -------------------------------------------------------------------------
    def branch_audio(self, tokens: Tensor) -> Tensor:
        """(1, c, h_w, d_A) -> one row per CFG branch; only the first branch hears the audio."""
        null = self.model.dit.null_audio_like(1, tokens.shape[1]).to(tokens.dtype)
        return torch.cat([tokens] + [null] * (self.branches - 1))

    def guide(self, v: Tensor) -> Tensor:
        s = self.cfg.sampling
        return guide(v, self.branches, self.cfg_scale, s.audio_scale, s.ref_scale)

    def denoise(self, audio_tokens: Tensor) -> Tensor:
        """The inner loop of Algorithm 1 for the next chunk: returns its clean latent Z_i(0)."""
        cfg, dit = self.cfg, self.model.dit
        c, g = cfg.chunk_latent_frames, cfg.latent_size
        eps = torch.randn(1, cfg.vae.latent_channels, c, g, g, generator=self.generator)
        z = eps.to(self.device, self.model.latent_mean.dtype)
        audio = self.branch_audio(audio_tokens.to(z.dtype))
        per_step = cfg.sampling.cache_mode == "per_step"

        def push(cache, chunk_kv):   # the last W chunks, this one with them
            return push_context(cache, chunk_kv, c * cfg.tokens_per_frame, cfg.prev_chunks)
        for j in range(self.steps):
            t = torch.full((self.branches, c), self.schedule[j], device=self.device)
            cache = self.caches[j] if per_step else self.caches[0]
            v, chunk_kv = dit.forward_chunk(z.expand(self.branches, -1, -1, -1, -1), t, audio,
                                            self.sink_kv, cache, self.text)
            if per_step:
                self.caches[j] = push(cache, chunk_kv)  # read by step j of the next chunks
            z = euler_step(z, self.guide(v), self.schedule[j], self.schedule[j + 1])
        if not per_step:  # "clean": one more forward of the finished chunk at t = 0
            t0 = torch.zeros(self.branches, c, device=self.device)
            _, chunk_kv = dit.forward_chunk(z.expand(self.branches, -1, -1, -1, -1), t0,
                                            audio, self.sink_kv, self.caches[0], self.text)
            self.caches[0] = push(self.caches[0], chunk_kv)
        return z

    @torch.inference_mode()
    def step(self, window: Tensor) -> np.ndarray:
        """Audio window of the next chunk (window_samples,) -> its 8c frames, uint8 (8c, H, W, 3)."""
        tokens = self.model.audio_tokens(window.to(self.device)[None])
        z = self.denoise(tokens)
        video = self.model.vae.decode_stream(self.model.denormalize(z), self.decode_state)
        self.chunk_index += 1
        return video_tensor_to_uint8(video)


@torch.inference_mode()
def iter_generate(model: RestModel, image: np.ndarray, audio: np.ndarray, seed: int = 0,
                  text: Tensor | None = None, steps: int | None = None,
                  cfg_scale: float | None = None, cfg_mode: str | None = None,
                  progress: bool = False, force: bool = False) -> Iterator[np.ndarray]:
    """Offline generation through the streaming loop, one chunk's frames at a time (constant
    memory however long the audio).

    image: uint8 (H, W, 3) at the model's resolution (see reference.media.load_image);
    audio: float32 mono at cfg.speech.sample_rate. Yields uint8 frames (n, H, W, 3) at cfg.fps,
    ceil(len(audio) / samples_per_frame) frames in all.
    """
    cfg = model.cfg
    audio_t = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    total = frames_for_samples(audio_t.numel(), cfg)
    num_chunks = math.ceil(total / cfg.frames_per_chunk)
    stream = ReferenceStream(model, image, seed=seed, text=text, steps=steps, cfg_scale=cfg_scale,
                             cfg_mode=cfg_mode, force=force)
    chunks = range(num_chunks)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="generating", unit="chunk")
    made = 0
    for i in chunks:
        window = chunk_windows(audio_t, cfg, first_chunk=i, num_chunks=1)[0]
        frames = stream.step(window)[: total - made]
        made += len(frames)
        yield frames


def generate(model: RestModel, image: np.ndarray, audio: np.ndarray, seed: int = 0,
             **kwargs) -> np.ndarray:
    """All frames of ``iter_generate`` in one array (N, H, W, 3)."""
    return np.concatenate(list(iter_generate(model, image, audio, seed=seed, **kwargs)))
