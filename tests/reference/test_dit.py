import pytest
import torch

from reference.config import paper_config
from reference.dit import A2VDiT, FullAttention, push_context, rope_axis_dims
from reference.flow import async_timesteps
from tests.conftest import make_tiny_config, open_audio_path

CHUNKS = 3


@pytest.fixture
def dit():
    return open_audio_path(A2VDiT(make_tiny_config())).eval()


def test_a_fresh_dit_starts_with_its_audio_path_shut():
    dit = A2VDiT(make_tiny_config()).eval()
    z, t, audio = clip_inputs(dit)
    torch.testing.assert_close(dit.forward_teacher(z, t, audio), dit.forward_teacher(z, t, audio + 1.0))
    with torch.no_grad():
        assert not torch.allclose(open_audio_path(dit).forward_teacher(z, t, audio),
                                  dit.forward_teacher(z, t, audio + 1.0))


def clip_inputs(dit, batch=2, chunks=CHUNKS, seed=0):
    cfg = dit.cfg
    c, g = cfg.chunk_latent_frames, cfg.latent_size
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.vae.latent_channels, 1 + c * chunks, g, g, generator=gen)
    t = async_timesteps(batch, chunks, c, generator=gen)
    s = cfg.speech
    audio = torch.randn(batch, c * chunks, s.audio_tokens_per_frame, s.audio_dim, generator=gen)
    return z, t, audio


def chunk_loop(dit, z, t, audio, text=None):
    """The student one chunk at a time with a KV cache of the last W chunks (how Algorithm 1
    runs it)."""
    cfg = dit.cfg
    c = cfg.chunk_latent_frames
    sink = dit.sink_kv(z[:, :, :1], text)
    prev, outs = None, []
    for i in range((z.shape[2] - 1) // c):
        frames = slice(1 + i * c, 1 + (i + 1) * c)
        v, new = dit.forward_chunk(z[:, :, frames], t[:, frames], audio[:, i * c:(i + 1) * c],
                                   sink, prev, text)
        prev = push_context(prev, new, c * cfg.tokens_per_frame, cfg.prev_chunks)
        outs.append(v)
    return torch.cat(outs, dim=2)


def windowed_dit(chunk: int, prev_chunks: int):
    cfg = make_tiny_config()
    cfg.chunk_latent_frames, cfg.prev_chunks = chunk, prev_chunks
    return open_audio_path(A2VDiT(cfg.validate())).eval()


@pytest.mark.parametrize("chunk,prev_chunks", [(1, 1), (1, 3), (2, 2), (3, 2)])
@torch.no_grad()
def test_every_chunk_and_window_streams_as_the_single_pass(chunk, prev_chunks):
    """c latent frames a chunk, W previous chunks in the cache: the chunk loop (the cache's ring
    of W chunks, filling up over the first W chunks and then dropping the oldest) equals the
    block-mask pass over the whole clip."""
    dit = windowed_dit(chunk, prev_chunks)
    z, t, audio = clip_inputs(dit, chunks=prev_chunks + 3)
    torch.testing.assert_close(chunk_loop(dit, z, t, audio), dit.forward_student(z, t, audio)[:, :, 1:],
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk,prev_chunks", [(1, 3), (2, 2)])
@torch.no_grad()
def test_the_window_reaches_back_w_chunks_per_block(chunk, prev_chunks):
    """A chunk sees W chunks back in every block, so through the DiT's depth it feels the chunk
    depth * W back and not the one before: a window one chunk short or long fails this."""
    dit = windowed_dit(chunk, prev_chunks)
    reach = prev_chunks * dit.cfg.dit.depth
    z, t, audio = clip_inputs(dit, chunks=reach + 2)
    moved = z.clone()
    moved[:, :, 1:1 + chunk] += 1.0                      # the first chunk
    base, out = dit.forward_student(z, t, audio), dit.forward_student(moved, t, audio)

    def frames(i):                                       # chunk i (0-based) in the output
        return slice(1 + i * chunk, 1 + (i + 1) * chunk)
    assert not torch.allclose(out[:, :, frames(reach)], base[:, :, frames(reach)])
    torch.testing.assert_close(out[:, :, frames(reach + 1)], base[:, :, frames(reach + 1)], atol=0, rtol=0)


def test_a_window_the_config_cannot_hold_is_refused():
    for field, value, words in (("prev_chunks", 0, "prev_chunks must be 1 to"),
                                ("prev_chunks", 99, "prev_chunks must be 1 to"),
                                ("chunk_latent_frames", 0, "chunk_latent_frames must be at least 1")):
        cfg = make_tiny_config()
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=words):
            cfg.validate()


def test_paper_preset_has_about_2b_parameters():
    with torch.device("meta"):
        model = A2VDiT(paper_config())
    n = sum(p.numel() for p in model.parameters())
    assert 1.9e9 < n < 2.4e9, n


def test_rope_split():
    assert rope_axis_dims(64) == (16, 24, 24)
    for d in (16, 32, 64, 128):
        assert sum(rope_axis_dims(d)) == d and all(x % 2 == 0 for x in rope_axis_dims(d))


@torch.no_grad()
def test_shapes(dit):
    z, t, audio = clip_inputs(dit)
    assert dit.forward_teacher(z, t, audio).shape == z.shape
    assert dit.forward_student(z, t, audio).shape == z.shape
    assert dit.forward_teacher(z, t, None).shape == z.shape  # null audio


@torch.no_grad()
def test_chunk_loop_with_kv_cache_equals_block_mask_single_pass(dit):
    z, t, audio = clip_inputs(dit)
    single = dit.forward_student(z, t, audio)[:, :, 1:]
    looped = chunk_loop(dit, z, t, audio)
    torch.testing.assert_close(looped, single, atol=1e-5, rtol=1e-4)
    text = torch.randn(2, 5, dit.cfg.dit.text_dim)
    torch.testing.assert_close(chunk_loop(dit, z, t, audio, text),
                               dit.forward_student(z, t, audio, text)[:, :, 1:], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_student_is_causal_and_teacher_is_not(dit):
    z, t, audio = clip_inputs(dit)
    c = dit.cfg.chunk_latent_frames
    z2, audio2 = z.clone(), audio.clone()
    z2[:, :, 1 + 2 * c:] += 1.0          # change the last chunk's latents
    audio2[:, 2 * c:] += 1.0             # and its audio
    before = slice(0, 1 + 2 * c)
    s1, s2 = dit.forward_student(z, t, audio), dit.forward_student(z2, t, audio2)
    torch.testing.assert_close(s1[:, :, before], s2[:, :, before], atol=0, rtol=0)
    assert not torch.allclose(s1[:, :, 1 + 2 * c:], s2[:, :, 1 + 2 * c:])
    t1, t2 = dit.forward_teacher(z, t, audio), dit.forward_teacher(z2, t, audio2)
    assert not torch.allclose(t1[:, :, 1:1 + c], t2[:, :, 1:1 + c])


@torch.no_grad()
def test_student_window_reaches_back_one_chunk_per_block(dit):
    """Chunk 1 influences chunk 2 (previous-chunk cache), and the sink influences every chunk."""
    z, t, audio = clip_inputs(dit)
    c = dit.cfg.chunk_latent_frames
    base = dit.forward_student(z, t, audio)
    z2 = z.clone()
    z2[:, :, 1:1 + c] += 1.0
    assert not torch.allclose(dit.forward_student(z2, t, audio)[:, :, 1 + c:1 + 2 * c],
                              base[:, :, 1 + c:1 + 2 * c])
    z3 = z.clone()
    z3[:, :, 0] += 1.0
    assert not torch.allclose(dit.forward_student(z3, t, audio)[:, :, -c:], base[:, :, -c:])


@torch.no_grad()
def test_audio_cross_attention_is_frame_level(dit):
    """Eq. 13: within a block, frame f's tokens read only e_f."""
    cfg = dit.cfg
    z, t, audio = clip_inputs(dit, chunks=1)
    cond = dit.condition(t, dit._with_sink_audio(audio, 2), None, 2, z.shape[2])
    x = dit.patch_in(dit.patchify(z))
    topo = FullAttention(z.shape[2], dit.grid, cfg.dit.head_dim, cfg.dit.rope_theta, z.device)
    out = dit.blocks[0](x, cond.t_mod, cond.text, cond.audio, 0, topo)
    cond.audio = cond.audio.clone()
    cond.audio[:, 2] += 1.0
    out2 = dit.blocks[0](x, cond.t_mod, cond.text, cond.audio, 0, topo)
    changed = (out - out2).abs().amax(dim=(0, 2, 3))
    assert changed[2] > 0 and torch.all(changed[[0, 1, 3]] == 0)
