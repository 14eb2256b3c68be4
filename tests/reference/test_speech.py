import pytest
import torch

from reference.speech import (SpeechAE, WhisperFrontend, chunk_audio_tokens, chunk_windows,
                              samples_needed, window_samples)
from tests.conftest import make_tiny_config, speech_like


def test_windows_line_up_with_the_timeline():
    cfg = make_tiny_config()
    assert window_samples(cfg) == 23040 and cfg.speech.lookahead_ms == 160
    audio = torch.arange(int(2.5 * cfg.samples_per_chunk), dtype=torch.float32) + 1
    w = chunk_windows(audio, cfg)
    assert w.shape == (3, 23040)
    assert torch.all(w[0, :16 * 320] == 0) and w[0, 16 * 320] == 1     # silence before the start
    assert w[1, 0] == 15360 - 16 * 320 + 1
    assert torch.all(w[2, -(23040 - (audio.numel() - (2 * 15360 - 5120))):] == 0)  # silence after the end
    assert chunk_windows(audio[:100], cfg).shape == (1, 23040)
    assert samples_needed(0, cfg) == 15360 + 8 * 320


@pytest.fixture(scope="module")
def frontend():
    return WhisperFrontend(make_tiny_config()).eval()


@torch.no_grad()
def test_features_depend_on_lookahead_but_not_beyond(frontend):
    cfg = make_tiny_config()
    audio = torch.from_numpy(speech_like(2.0))
    base = frontend(chunk_windows(audio, cfg, num_chunks=1))
    assert base.shape == (1, 48, 64)
    after = audio.clone()
    after[samples_needed(0, cfg):] = 0
    torch.testing.assert_close(frontend(chunk_windows(after, cfg, num_chunks=1)), base)
    inside = audio.clone()
    inside[15360:samples_needed(0, cfg)] = 0
    assert not torch.allclose(frontend(chunk_windows(inside, cfg, num_chunks=1)), base)


@torch.no_grad()
def test_batching_and_silence(frontend):
    cfg = make_tiny_config()
    w = chunk_windows(torch.from_numpy(speech_like(3.0)), cfg)
    torch.testing.assert_close(frontend(w)[1:2], frontend(w[1:2]), atol=1e-5, rtol=1e-5)
    ae = SpeechAE(cfg.speech)
    tokens = chunk_audio_tokens(frontend, ae, torch.zeros(1, window_samples(cfg)), cfg)
    assert tokens.shape == (1, 3, 4, 16) and torch.isfinite(tokens).all()
    assert ae.decode(tokens).shape == (1, 3, 16, 64)


def test_loads_a_local_whisper_directory(tmp_path, frontend):
    from transformers import WhisperConfig, WhisperModel
    w = make_tiny_config().speech.whisper
    src = WhisperModel(WhisperConfig(num_mel_bins=80, d_model=w.d_model, encoder_layers=w.encoder_layers,
                                     encoder_attention_heads=w.encoder_attention_heads,
                                     encoder_ffn_dim=w.encoder_ffn_dim, decoder_layers=1,
                                     decoder_attention_heads=2, decoder_ffn_dim=32))
    src.save_pretrained(tmp_path / "whisper")
    fe = WhisperFrontend(make_tiny_config())
    fe.load_pretrained(tmp_path / "whisper")
    torch.testing.assert_close(fe.encoder.layers[0].fc1.weight, src.encoder.layers[0].fc1.weight)
    torch.testing.assert_close(fe.encoder.embed_positions.weight, src.encoder.embed_positions.weight[:72])
    wide = WhisperModel(WhisperConfig(num_mel_bins=80, d_model=96, encoder_layers=2, encoder_attention_heads=2,
                                      encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=2,
                                      decoder_ffn_dim=32))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="shape of"):
        fe.load_pretrained(tmp_path / "wide")
