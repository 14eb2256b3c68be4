"""Causal video VAE: shapes, causality of encoder and decoder, streaming decode == whole decode,
bounded streaming state, reproducible sampling."""
import dataclasses

import pytest
import torch

from reference.config import cpu_config
from reference.vae import CausalVideoVAE
from tests.conftest import make_tiny_config, synthetic_clip

CFG = make_tiny_config()
RES = CFG.resolution
LATENT = RES // CFG.vae.spatial_compression
TC = CFG.vae.temporal_compression


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return CausalVideoVAE(CFG.vae).eval()


def latents(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, CFG.vae.latent_channels, frames, LATENT, LATENT, generator=g)


@pytest.mark.parametrize("frames", [1, 9, 17])
def test_shapes(vae, frames):
    k = (frames - 1) // TC
    with torch.no_grad():
        mean, logvar = vae.encode_dist(synthetic_clip(frames, RES))
        video = vae.decode(mean)
    assert mean.shape == logvar.shape == (1, CFG.vae.latent_channels, 1 + k, LATENT, LATENT)
    assert video.shape == (1, 3, frames, RES, RES)
    assert torch.isfinite(video).all()


def test_single_image_is_latent_frame_zero_of_any_clip(vae):
    clip = synthetic_clip(17, RES)
    with torch.no_grad():
        z_image = vae.encode(clip[:, :, :1])
        z_clip = vae.encode(clip)
    assert z_image.shape == (1, CFG.vae.latent_channels, 1, LATENT, LATENT)
    torch.testing.assert_close(z_image, z_clip[:, :, :1], atol=1e-5, rtol=1e-5)


def test_rejects_frame_counts_that_are_not_one_plus_multiple():
    vae = CausalVideoVAE(CFG.vae)
    with pytest.raises(ValueError):
        vae.encode(synthetic_clip(8, RES))


@pytest.mark.parametrize("j", [0, 1])
def test_encoder_is_causal(vae, j):
    """Latent frame j sees video frames <= 8j only."""
    clip = synthetic_clip(17, RES)
    changed = clip.clone()
    changed[:, :, TC * j + 1:] = torch.rand_like(changed[:, :, TC * j + 1:]) * 2 - 1
    with torch.no_grad():
        z, z_changed = vae.encode(clip), vae.encode(changed)
    torch.testing.assert_close(z[:, :, :j + 1], z_changed[:, :, :j + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z[:, :, j + 1], z_changed[:, :, j + 1], atol=1e-3)


@pytest.mark.parametrize("j", [0, 1, 2])
def test_decoder_is_causal(vae, j):
    """Video frames <= 8j come from latent frames <= j only."""
    z = latents(4)
    changed = z.clone()
    changed[:, :, j + 1:] = latents(3 - j, seed=1)
    with torch.no_grad():
        x, x_changed = vae.decode(z), vae.decode(changed)
    torch.testing.assert_close(x[:, :, :TC * j + 1], x_changed[:, :, :TC * j + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x[:, :, TC * j + 1], x_changed[:, :, TC * j + 1], atol=1e-3)


@pytest.mark.parametrize("split", [[1] * 7, [1, 3, 3], [2, 5], [7], [1, 0, 6]])
def test_decode_stream_equals_decode(vae, split):
    z = latents(sum(split))
    state = vae.new_decode_state()
    with torch.no_grad():
        parts, start = [], 0
        for n in split:
            parts.append(vae.decode_stream(z[:, :, start:start + n], state))
            assert parts[-1].shape[2] == (TC * n - (TC - 1) if start == 0 else TC * n)
            start += n
        whole = vae.decode(z)
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)


def test_stream_state_memory_is_bounded(vae):
    state = vae.new_decode_state()
    sizes, keys = [], []
    with torch.inference_mode():
        vae.decode_stream(latents(1), state)
        for i in range(12):
            vae.decode_stream(latents(1 + i % 3, seed=i), state)
            sizes.append(state.numel())
            keys.append(len(state.conv_cache) + len(state.started))
    assert len(set(sizes)) == 1 and len(set(keys)) == 1
    for cached in state.conv_cache.values():  # short tensors that do not pin a whole chunk
        assert cached.shape[2] == CFG.vae.temporal_kernel - 1
        assert cached.untyped_storage().nbytes() == cached.numel() * cached.element_size()


def test_sampling_is_reproducible_with_a_generator(vae):
    clip = synthetic_clip(9, RES)
    with torch.no_grad():
        mean, logvar = vae.encode_dist(clip)
        a = vae.encode(clip, sample=True, generator=torch.Generator().manual_seed(3))
        b = vae.encode(clip, sample=True, generator=torch.Generator().manual_seed(3))
        c = vae.encode(clip, sample=True, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(vae.encode(clip), mean)
    assert logvar.shape == mean.shape and torch.isfinite(logvar).all()


def test_gradients_reach_every_parameter():
    vae = CausalVideoVAE(CFG.vae)
    z = vae.encode(synthetic_clip(9, RES), sample=True, generator=torch.Generator().manual_seed(0))
    vae.decode(z).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


def test_cpu_preset_shapes_and_scale():
    cfg = cpu_config()
    vae = CausalVideoVAE(cfg.vae).eval()
    side = cfg.latent_size
    with torch.inference_mode():
        z = vae.encode(synthetic_clip(9, cfg.resolution))
        state = vae.new_decode_state()
        first = vae.decode_stream(z[:, :, :1], state)
        chunk = vae.decode_stream(torch.randn(1, 32, cfg.chunk_latent_frames, side, side), state)
    assert z.shape == (1, 32, 2, side, side) == (1, 32, 2, 8, 8)
    assert first.shape == (1, 3, 1, 256, 256)
    assert chunk.shape == (1, 3, cfg.frames_per_chunk, 256, 256)
    for x in (z, chunk):  # a randomly initialised VAE keeps activations O(1)
        assert torch.isfinite(x).all() and 0.01 < x.std() < 10


# ---- the light streaming decoder -------------------------------------------------------------

LIGHT_CFG = dataclasses.replace(CFG.vae, light_width=8, decoder="light")


@pytest.fixture(scope="module")
def light_vae():
    torch.manual_seed(0)
    return CausalVideoVAE(LIGHT_CFG).eval()


def test_light_decoder_renders_what_the_full_one_renders_in_shape(light_vae):
    z = latents(4)
    with torch.no_grad():
        light, full = light_vae.decode(z), light_vae.decode(z, "full")
    assert light.shape == full.shape == (1, 3, 1 + 3 * TC, RES, RES)
    assert not torch.allclose(light, full)      # its own upper stages: only the lowest is shared
    with pytest.raises(ValueError, match="no 'light' decoder"):
        CausalVideoVAE(CFG.vae).decode(z, "light")


@pytest.mark.parametrize("split", [[1, 3], [1, 1, 1, 1], [2, 2], [4]])
def test_light_decoder_streams_as_it_decodes_the_whole_sequence(light_vae, split):
    z = latents(4, seed=3)
    state = light_vae.new_decode_state()
    parts, start = [], 0
    with torch.no_grad():
        for n in split:
            parts.append(light_vae.decode_stream(z[:, :, start:start + n], state))
            start += n
        whole = light_vae.decode(z)
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=1e-5)


def test_light_decoder_is_causal_and_its_state_bounded(light_vae):
    z = latents(4, seed=4)
    changed = z.clone()
    changed[:, :, 3:] += 1.0
    with torch.no_grad():
        a, b = light_vae.decode(z), light_vae.decode(changed)
        assert torch.equal(a[:, :, :1 + 2 * TC], b[:, :, :1 + 2 * TC])   # frames before latent 3
        assert not torch.allclose(a[:, :, 1 + 2 * TC:], b[:, :, 1 + 2 * TC:])
        state = light_vae.new_decode_state()
        light_vae.decode_stream(latents(1), state)
        sizes = [state.numel() for _ in range(3) if light_vae.decode_stream(latents(3), state) is not None]
    assert len(set(sizes)) == 1


def test_light_output_is_channels_last_frames(light_vae):
    """(B, 3, T, H, W) whose bytes are (B, T, H, W, 3): what uint8 frames need, without a copy."""
    with torch.no_grad():
        video = light_vae.decode(latents(2))
    assert video.permute(0, 2, 3, 4, 1).is_contiguous()


def test_light_decoder_is_a_fraction_of_the_full_one_at_the_cpu_preset():
    """What makes it light: its multiply-adds per chunk, counted, at most a fifth of the full
    decoder's at the cpu preset (the speed itself is measured in bench/ and tools/sampler_table.py)."""
    from torch.utils.flop_counter import FlopCounterMode
    from reference.config import cpu_config
    vae_cfg = dataclasses.replace(cpu_config().vae, light_width=16)
    torch.manual_seed(0)
    vae = CausalVideoVAE(vae_cfg).eval()
    z = torch.randn(1, vae_cfg.latent_channels, 3, 8, 8)
    flops = {}
    for which in ("full", "light"):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            vae.decode(z, which)
        flops[which] = counter.get_total_flops()
    assert flops["light"] < flops["full"] / 5
