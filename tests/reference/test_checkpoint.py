import json

import pytest
import torch

from reference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reference.model import RestModel
from tests.conftest import make_tiny_config


def test_roundtrip(tmp_path):
    model = RestModel.random(make_tiny_config(), seed=1)
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    # overwriting an existing checkpoint leaves exactly one, complete
    save_checkpoint(RestModel.random(make_tiny_config(), seed=2), tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_random_init_is_reproducible():
    a, b = RestModel.random(make_tiny_config(), 5), RestModel.random(make_tiny_config(), 5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_mismatched_config_names_the_tensors(tmp_path):
    save_checkpoint(RestModel.random(make_tiny_config()), tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["dit"]["depth"] = 3
    cfg["dit"]["ffn"] = 96
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ckpt")
    msg = str(e.value)
    assert "does not match its config" in msg
    assert "missing dit.blocks.2." in msg and "dit.blocks.0.ffn.0.weight" in msg


@pytest.mark.parametrize("damage", ["no_dir", "no_weights", "bad_json", "bad_weights", "bad_field"])
def test_damaged_checkpoints_give_clear_errors(tmp_path, damage):
    path = tmp_path / "ckpt"
    save_checkpoint(RestModel.random(make_tiny_config()), path)
    if damage == "no_dir":
        path = tmp_path / "nowhere"
    elif damage == "no_weights":
        (path / "model.safetensors").unlink()
    elif damage == "bad_json":
        (path / "config.json").write_text("{not json")
    elif damage == "bad_weights":
        (path / "model.safetensors").write_bytes(b"garbage" * 10)
    else:
        cfg = json.loads((path / "config.json").read_text())
        cfg["dit"]["wings"] = 2
        (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_checkpoints_from_before_audio_whitening_still_load(tmp_path):
    from safetensors.torch import load_file, save_file
    model = RestModel.random(make_tiny_config())
    path = save_checkpoint(model, tmp_path / "old")
    state = load_file(str(path / "model.safetensors"))
    del state["audio_mean"], state["audio_whiten"]
    save_file(state, str(path / "model.safetensors"))
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.audio_whiten, torch.eye(loaded.cfg.speech.audio_dim))
    assert torch.equal(loaded.audio_mean, torch.zeros(loaded.cfg.speech.audio_dim))
    assert torch.equal(loaded.dit.patch_in.weight, model.dit.patch_in.weight)


def test_the_sampler_and_decoder_travel_with_the_checkpoint(tmp_path):
    """A checkpoint samples the way its config says: steps, guidance, scale and which decoder
    (with the light decoder's weights) come back from config.json; options override them."""
    import dataclasses
    from reference.pipeline import sampler_settings
    cfg = make_tiny_config()
    cfg = dataclasses.replace(
        cfg, sampling=dataclasses.replace(cfg.sampling, steps=2, cfg_mode="none"),
        vae=dataclasses.replace(cfg.vae, light_width=8, decoder="light")).validate()
    model = RestModel.random(cfg, seed=3)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg.sampling.steps == 2 and loaded.cfg.sampling.cfg_mode == "none"
    assert loaded.cfg.vae.decoder == "light" and loaded.vae.light_decoder is not None
    assert torch.equal(loaded.vae.light_decoder.conv_out.weight, model.vae.light_decoder.conv_out.weight)
    assert sampler_settings(loaded.cfg) == (2, "none", loaded.cfg.sampling.cfg_scale)
    assert sampler_settings(loaded.cfg, steps=4, cfg_mode="joint", cfg_scale=3.0) == (4, "joint", 3.0)
    loaded.use_decoder("full")                    # a switch of behaviour: it still saves and loads
    save_checkpoint(loaded, tmp_path / "again")
    assert load_checkpoint(tmp_path / "again").cfg.vae.decoder == "full"
    with pytest.raises(ValueError, match="no 'light' decoder"):
        RestModel.random(make_tiny_config()).use_decoder("light")


def test_a_checkpoint_is_as_readable_as_any_file_written_here(tmp_path):
    """Written through a private temporary directory, the checkpoint still gets the umask's
    modes (0755 / 0644 under the usual 022), so that another user, a server, can load it."""
    import os
    save_checkpoint(RestModel.random(make_tiny_config(), seed=1), tmp_path / "ckpt",
                    extra={"train_state.pt": {"step": 1}})
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o777 & ~umask
    for path in (tmp_path / "ckpt").iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
