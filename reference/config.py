"""Configuration dataclasses for REST and its two presets.

``paper``: the sizes the paper reports (512x512, VAE 32x32x8 / 128 channels, 28x2048 DiT, chunk c=3,
Whisper-tiny, 8 steps, Joint-CFG alpha=6). ``cpu``: the same code paths at a size that streams at
least as fast as real time on two CPU cores. ``tiny``: the same code paths again, for tests and
smoke runs (64x64, a 2-block DiT). Every shape in the code derives from these fields;
nothing else hard-codes a size.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class VAEConfig:
    """Causal 3D-conv video VAE (LTX-Video style).

    Pixels are first folded ``patch_size x patch_size`` into channels, then each entry of
    ``down_stages`` halves time and space once more: total compression is
    ``patch_size * 2**len(down_stages)`` in space and ``2**len(down_stages)`` in time.
    """
    in_channels: int = 3
    latent_channels: int = 128
    patch_size: int = 4
    block_channels: tuple[int, ...] = (128, 256, 512, 512)  # stage 0 at H/patch, then one per downsample
    layers_per_block: int = 2
    temporal_kernel: int = 3  # causal: pads kernel-1 past frames, never future ones
    # The light streaming decoder (not in the paper): reference.vae.LightDecoder, light_width
    # channels wide at the top resolution and twice as wide at each one below, distilled
    # by `rest-fast train decoder`; 0 when the model has none. `decoder` says which renders.
    light_width: int = 0
    decoder: str = "full"             # "full" (the VAE's own) | "light"

    @property
    def spatial_compression(self) -> int:
        return self.patch_size * 2 ** (len(self.block_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** (len(self.block_channels) - 1)


@dataclass
class WhisperConfigLite:
    """Shape of the Whisper encoder (defaults: openai/whisper-tiny)."""
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536


@dataclass
class SpeechConfig:
    """Whisper front end + SpeechAE (eq. 5-6).

    Whisper runs at 50 frames/s, so one latent frame (8 video frames = 0.32 s) owns
    ``whisper_frames_per_latent`` = 16 Whisper frames (H_w). The SpeechAE compresses those to
    ``audio_tokens_per_frame`` (h_w) tokens of width ``audio_dim`` (d_A).
    The encoder runs over a bounded window around each chunk: ``left_context_frames`` of
    history and ``lookahead_frames`` of future audio (the lookahead is latency; 1 frame = 20 ms).
    """
    sample_rate: int = 16000
    whisper: WhisperConfigLite = field(default_factory=WhisperConfigLite)
    whisper_frames_per_latent: int = 16
    left_context_frames: int = 16
    lookahead_frames: int = 8
    ae_hidden: int = 384
    ae_layers: int = 2
    ae_heads: int = 6
    audio_tokens_per_frame: int = 4
    audio_dim: int = 64

    @property
    def lookahead_ms(self) -> float:
        return self.lookahead_frames * 20.0


@dataclass
class DiTConfig:
    """A2V-DiT: self-attention with 3D RoPE, text and frame-level audio cross-attention,
    AdaLN-single per-token timestep modulation, FFN (paper: 28 x 2048, 32 heads, FFN 8192)."""
    depth: int = 28
    hidden: int = 2048
    heads: int = 32
    ffn: int = 8192
    patch_size: int = 1
    text_dim: int = 4096        # width of precomputed text embeddings (T5-XXL-sized by default)
    text_tokens: int = 128      # length of the learned null text embedding
    timestep_freq_dim: int = 256
    rope_theta: float = 10000.0
    # The student's context (ablations of Table 2): the ID sink and the previous chunk's cache.
    student_sink: bool = True
    student_prev: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# DiT rows per stream for each guidance mode: the CFG branches computed side by side.
GUIDANCE_BRANCHES = {"none": 1, "joint": 2, "multi": 3}

# The most previous chunks a student may keep (RestConfig.prev_chunks): every one is another slot
# of the fast path's static ring, per stream, CFG branch, block and context cache, and another
# key range each query visits.
MAX_PREV_CHUNKS = 8


@dataclass
class SamplingConfig:
    """Algorithm 1 settings. They belong to the checkpoint (its config.json): a checkpoint samples
    the way it was distilled or measured to sample; the CLI and the APIs can override each."""
    steps: int = 8
    shift: float = 1.0              # SD3/LTX timestep shift; 1.0 is the plain linear schedule
    cfg_scale: float = 6.0          # Joint-CFG alpha
    cfg_mode: str = "joint"         # "joint": 2 branches | "multi": 3 branches (audio + reference
                                    # scales) | "none": the conditional branch alone, one forward
                                    # per step (what joint with alpha = 1 computes, at half the work)
    audio_scale: float = 6.0        # used by cfg_mode="multi"
    ref_scale: float = 1.5          # used by cfg_mode="multi"
    cache_mode: str = "per_step"    # "per_step": one context cache per step | "clean": one, refilled at t=0


# How a DiT's weights were made (RestConfig.provenance.kind): which samplers they can serve.
PROVENANCE_KINDS = ("unknown", "guidance_dropout", "distilled")


@dataclass
class ProvenanceConfig:
    """How the DiT's weights were made, and so which samplers they serve (reference.pipeline.
    sampler_settings refuses the others). Training writes it; config.json carries it."""
    kind: str = "unknown"           # "guidance_dropout": trained with condition dropout (teacher,
                                    # student), so every branch of Joint/Multi CFG is learnt: any
                                    # sampler | "distilled": one branch, a fixed step count |
                                    # "unknown": random weights, or written before this record
    method: str = ""                # distilled: "progressive", "dmd" or "progressive+dmd"
    steps: int = 0                  # distilled: the sampler steps it learnt (more are refused)
    guidance_scale: float = 0.0     # distilled: the Joint-CFG scale folded into its one branch
    joint_scale_checked: float = 1.0  # distilled: the largest Joint-CFG scale on top of that
                                    # measured to still give faces (1: none; larger is refused)


@dataclass
class ASDConfig:
    """Training objectives (eq. 19-24) and condition dropout for classifier-free guidance."""
    tau: float = 0.1                 # temperature of L_CON (eq. 21)
    contrastive: str = "decoupled"   # "decoupled": j != i in the denominator, as written | "infonce"
    lambda_con: float = 1.0
    lambda_smo: float = 1.0
    audio_drop: float = 0.1          # P(null audio and null text): the unconditional CFG branch
    ref_drop: float = 0.05           # P(zero reference latent): the "neither" branch of multi-CFG
    motion_weight: float = 0.0       # not in the paper: L_S/teacher loss weight on moving positions
                                     # (reference.flow.motion_weight); 0 is the paper's plain MSE


@dataclass
class RestConfig:
    name: str = "paper"
    resolution: int = 512
    fps: int = 25
    chunk_latent_frames: int = 3    # c: a chunk of c latent frames (8c video frames: 0.32 s each at 25 fps)
    # W: previous chunks the student's cache keeps beside the ID sink. The paper's is 1; a shorter
    # chunk keeps as much past with a larger W (c = 1, W = 3: the 0.96 s of c = 3, W = 1).
    prev_chunks: int = 1
    vae: VAEConfig = field(default_factory=VAEConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    asd: ASDConfig = field(default_factory=ASDConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    # Derived quantities, named once here so that every module agrees on them.
    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.spatial_compression

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.dit.patch_size) ** 2

    @property
    def frames_per_latent(self) -> int:
        return self.vae.temporal_compression

    @property
    def frames_per_chunk(self) -> int:
        return self.chunk_latent_frames * self.frames_per_latent

    @property
    def samples_per_frame(self) -> int:
        return self.speech.sample_rate // self.fps

    @property
    def samples_per_chunk(self) -> int:
        return self.frames_per_chunk * self.samples_per_frame

    def validate(self) -> "RestConfig":
        s, v = self.speech, self.vae
        if v.decoder not in ("full", "light"):
            raise ValueError(f"vae.decoder must be 'full' or 'light', not {v.decoder!r}")
        if v.light_width < 0 or len(v.block_channels) < 3:
            raise ValueError(f"vae.light_width must be >= 0 (0: no light decoder) and the VAE needs "
                             f"3 or more stages, got {v.light_width} and {len(v.block_channels)}")
        if v.decoder == "light" and not v.light_width:
            raise ValueError("vae.decoder is 'light' but the model has no light decoder "
                             "(vae.light_width 0): train one with `rest-fast train decoder`")
        if self.resolution % v.spatial_compression:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE's "
                             f"spatial compression {v.spatial_compression}")
        if self.speech.sample_rate % self.fps:
            raise ValueError("sample_rate must be a multiple of fps")
        whisper_fps = s.sample_rate // 320  # Whisper: hop 160, conv stride 2 -> 50 frames/s
        if s.whisper_frames_per_latent * self.fps != whisper_fps * self.frames_per_latent:
            raise ValueError("whisper_frames_per_latent must cover exactly one latent frame of video")
        if s.whisper_frames_per_latent % s.audio_tokens_per_frame:
            raise ValueError("audio_tokens_per_frame must divide whisper_frames_per_latent")
        if self.chunk_latent_frames < 1:
            raise ValueError(f"chunk_latent_frames must be at least 1 (a chunk of 0 frames makes nothing), "
                             f"got {self.chunk_latent_frames}")
        if not 1 <= self.prev_chunks <= MAX_PREV_CHUNKS:
            raise ValueError(f"prev_chunks must be 1 to {MAX_PREV_CHUNKS} (the previous chunks the cache holds "
                             f"beside the sink; the static ring has prev_chunks + 1 slots), got {self.prev_chunks}")
        if self.dit.hidden % self.dit.heads or self.dit.head_dim % 2:
            raise ValueError("hidden must split into heads of even width")
        from .flow import check_guidance_scale
        if self.sampling.steps < 1 or not self.sampling.shift > 0:
            raise ValueError(f"sampling needs steps >= 1 and shift > 0, got steps {self.sampling.steps}, "
                             f"shift {self.sampling.shift}")
        for name in ("cfg_scale", "audio_scale", "ref_scale"):
            check_guidance_scale(getattr(self.sampling, name), f"sampling.{name}")
        if self.sampling.cfg_mode not in GUIDANCE_BRANCHES:
            raise ValueError(f"cfg_mode must be one of {sorted(GUIDANCE_BRANCHES)}, not {self.sampling.cfg_mode!r}")
        if self.sampling.cache_mode not in ("per_step", "clean"):
            raise ValueError(f"cache_mode must be 'per_step' or 'clean', not {self.sampling.cache_mode!r}")
        p = self.provenance
        if p.kind not in PROVENANCE_KINDS:
            raise ValueError(f"provenance.kind must be one of {', '.join(PROVENANCE_KINDS)}, not {p.kind!r}")
        if p.kind == "distilled" and (p.steps < 1 or not p.joint_scale_checked >= 1):
            raise ValueError(f"a distilled checkpoint's provenance needs steps >= 1 and "
                             f"joint_scale_checked >= 1, got {p.steps} and {p.joint_scale_checked}")
        from .pipeline import untrained_sampler   # here: pipeline imports this module
        problem = untrained_sampler(self, self.sampling.steps, self.sampling.cfg_mode, self.sampling.cfg_scale)
        if problem:
            raise ValueError(f"the config's own sampler contradicts its provenance (the checkpoint {problem})")
        if self.asd.contrastive not in ("decoupled", "infonce"):
            raise ValueError(f"asd.contrastive must be 'decoupled' or 'infonce', not {self.asd.contrastive!r}")
        return self

    # --- serialisation (config.json of a checkpoint) -------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "RestConfig":
        def build(kind, data):
            kwargs = {}
            for f in dataclasses.fields(kind):
                if f.name not in data:
                    continue
                value = data[f.name]
                sub = _SUBCONFIGS.get((kind, f.name))
                if sub is not None:
                    value = build(sub, value)
                elif isinstance(value, list):
                    value = tuple(value)
                kwargs[f.name] = value
            unknown = set(data) - {f.name for f in dataclasses.fields(kind)}
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields in config: {sorted(unknown)}")
            return kind(**kwargs)
        return build(cls, d).validate()


_SUBCONFIGS = {
    (RestConfig, "vae"): VAEConfig,
    (RestConfig, "speech"): SpeechConfig,
    (RestConfig, "dit"): DiTConfig,
    (RestConfig, "sampling"): SamplingConfig,
    (RestConfig, "asd"): ASDConfig,
    (RestConfig, "provenance"): ProvenanceConfig,
    (SpeechConfig, "whisper"): WhisperConfigLite,
}


def paper_config() -> RestConfig:
    """The paper's preset (about 2B DiT parameters)."""
    return RestConfig(name="paper").validate()


def cpu_config() -> RestConfig:
    """Same code paths, sized to stream faster than real time on 2 CPU cores."""
    return RestConfig(
        name="cpu",
        resolution=256,
        vae=VAEConfig(latent_channels=32, patch_size=4, block_channels=(24, 48, 96, 128),
                      layers_per_block=1),
        # A narrower Whisper-shaped encoder: with no model hub it is random and frozen, and the
        # trained checkpoint must fit in the package (fp16, under 20 MiB).
        speech=SpeechConfig(whisper=WhisperConfigLite(d_model=128, encoder_layers=2,
                                                      encoder_attention_heads=4, encoder_ffn_dim=512),
                            ae_hidden=128, ae_layers=1, ae_heads=4, audio_tokens_per_frame=4,
                            audio_dim=32),
        dit=DiTConfig(depth=4, hidden=256, heads=8, ffn=1024, text_dim=64, text_tokens=8),
    ).validate()


def tiny_config() -> RestConfig:
    """The smallest model with every code path (64x64 video, 16x spatial / 8x temporal VAE, a
    2-block DiT, a narrow Whisper): seconds, not minutes, for tests and smoke runs."""
    return RestConfig(
        name="tiny",
        resolution=64,
        vae=VAEConfig(latent_channels=8, patch_size=2, block_channels=(8, 16, 16, 16),
                      layers_per_block=1),
        speech=SpeechConfig(
            whisper=WhisperConfigLite(d_model=64, encoder_layers=2, encoder_attention_heads=2,
                                      encoder_ffn_dim=128),
            ae_hidden=32, ae_layers=1, ae_heads=2, audio_tokens_per_frame=4, audio_dim=16),
        dit=DiTConfig(depth=2, hidden=64, heads=4, ffn=128, text_dim=16, text_tokens=4,
                      timestep_freq_dim=32),
    ).validate()


PRESETS = {"paper": paper_config, "cpu": cpu_config, "tiny": tiny_config}


def get_config(name: str) -> RestConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
