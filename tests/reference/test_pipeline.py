import dataclasses

import numpy as np
import pytest
import torch

from reference.model import RestModel, video_tensor_to_uint8
from reference.pipeline import ReferenceStream, frames_for_samples, generate, iter_generate
from reference.speech import chunk_windows, samples_needed
from tests.conftest import make_tiny_config, open_audio_path, speech_like


@pytest.fixture(scope="module")
def model():
    return open_audio_path(RestModel.random(make_tiny_config())).eval()


@pytest.fixture(scope="module")
def portrait():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("seconds,frames", [(0.3, 8), (0.96, 24), (2.4, 60), (0.001, 1)])
def test_frame_count_covers_the_audio(model, portrait, seconds, frames):
    audio = speech_like(seconds)
    out = generate(model, portrait, audio, seed=0)
    assert out.dtype == np.uint8 and out.shape == (frames, 64, 64, 3)
    assert frames_for_samples(len(audio), model.cfg) == frames


def test_same_seed_same_video(model, portrait):
    audio = speech_like(1.2)
    a, b = generate(model, portrait, audio, seed=3), generate(model, portrait, audio, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, generate(model, portrait, audio, seed=4))


def test_silence_works(model, portrait):
    out = generate(model, portrait, np.zeros(16000, np.float32), seed=0)
    assert out.shape == (25, 64, 64, 3)


def test_chunks_do_not_depend_on_future_audio(model, portrait):
    """Streaming causality: chunk 0 is fixed once its window (chunk + lookahead) has arrived."""
    cfg = model.cfg
    audio = speech_like(2.0)
    changed = audio.copy()
    changed[samples_needed(0, cfg):] = 0.5 * np.sign(changed[samples_needed(0, cfg):])
    a = generate(model, portrait, audio)[: cfg.frames_per_chunk]
    b = generate(model, portrait, changed)[: cfg.frames_per_chunk]
    assert np.array_equal(a, b)
    c = generate(model, portrait, changed)[cfg.frames_per_chunk:]
    assert not np.array_equal(generate(model, portrait, audio)[cfg.frames_per_chunk:], c)


@torch.no_grad()
def test_streaming_decode_equals_decoding_the_whole_latent_sequence(model, portrait):
    cfg = model.cfg
    audio = torch.from_numpy(speech_like(2.0))
    stream = ReferenceStream(model, portrait, seed=0)
    windows = chunk_windows(audio, cfg, num_chunks=3)
    latents, streamed = [], []
    for w in windows:
        z = stream.denoise(model.audio_tokens(w[None]))
        latents.append(z)
        streamed.append(model.vae.decode_stream(model.denormalize(z), stream.decode_state))
    z_ref = model.encode_reference(portrait)
    whole = model.vae.decode(model.denormalize(torch.cat([z_ref] + latents, dim=2)))[:, :, 1:]
    torch.testing.assert_close(torch.cat(streamed, dim=2), whole, atol=1e-4, rtol=1e-4)


def test_iter_generate_yields_one_chunk_at_a_time(model, portrait):
    pieces = list(iter_generate(model, portrait, speech_like(2.0)))
    assert [len(p) for p in pieces] == [24, 24, 2]


@pytest.mark.parametrize("change", [dict(cache_mode="clean"), dict(cfg_mode="multi")])
def test_options_run_and_change_the_result(portrait, change):
    cfg = make_tiny_config()
    base = RestModel.random(cfg).eval()
    cfg2 = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, **change))
    other = RestModel.random(cfg2).eval()
    audio = speech_like(2.0)
    a, b = generate(base, portrait, audio), generate(other, portrait, audio)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_text_embeddings_are_an_input(model, portrait):
    audio = speech_like(1.0)
    text = torch.randn(model.cfg.dit.text_tokens, model.cfg.dit.text_dim)
    a = generate(model, portrait, audio, text=text)
    assert a.shape == (25, 64, 64, 3) and not np.array_equal(a, generate(model, portrait, audio))


def test_steps_and_cfg_are_respected(model, portrait):
    audio = speech_like(0.5)
    base = generate(model, portrait, audio)
    assert not np.array_equal(base, generate(model, portrait, audio, steps=2))
    assert not np.array_equal(base, generate(model, portrait, audio, cfg_scale=1.0))


def test_uint8_conversion_rounds_and_clamps():
    v = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 1, 1)
    out = video_tensor_to_uint8(v)
    assert out[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("cache_mode", ["per_step", "clean"])
def test_short_chunks_keep_w_chunks_of_past_and_no_more(portrait, cache_mode):
    """At 1 latent frame a chunk with W = 3 the stream makes 0.32 s a chunk, its caches fill up
    to three chunks of K/V and stay there however long it runs (constant memory)."""
    cfg = make_tiny_config()
    cfg.chunk_latent_frames, cfg.prev_chunks = 1, 3
    cfg.speech.left_context_frames = 48     # the 3-frame chunk's window length (72 Whisper frames)
    cfg.sampling.cache_mode = cache_mode
    model = open_audio_path(RestModel.random(cfg.validate())).eval()
    stream = ReferenceStream(model, portrait, steps=2)
    audio = torch.from_numpy(speech_like(3.0))
    tokens = cfg.tokens_per_frame
    for i in range(6):
        frames = stream.step(chunk_windows(audio, cfg, first_chunk=i, num_chunks=1)[0])
        assert frames.shape == (cfg.frames_per_chunk, 64, 64, 3) and cfg.frames_per_chunk == 8
        held = {k.shape[2] for cache in stream.caches for k, _ in cache}
        assert held == {min(i + 1, 3) * tokens}, (i, held)
