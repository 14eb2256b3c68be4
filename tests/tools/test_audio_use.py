import pytest
import torch

from reference.data.latents import LatentClips
from reference.data.synthetic import SyntheticTalkingHeads
from reference.model import RestModel
from tests.conftest import load_script, make_tiny_config, open_audio_path

@pytest.fixture(scope="module")
def audio_use():
    return load_script("tools/audio_use.py")


def test_the_gap_is_zero_for_a_dit_that_ignores_its_audio(audio_use):
    cfg = make_tiny_config()
    model = RestModel.random(cfg).eval()
    dataset = SyntheticTalkingHeads.for_config(cfg, num_chunks=2)
    pool = LatentClips.build(model, dataset, 3, progress=False)
    z, feats = pool.sample(4, 2, torch.Generator().manual_seed(0))
    own, other = audio_use.mouth_error(model, z, feats, 0.95)
    assert own == other                                  # a fresh DiT's audio path is shut
    own, other = audio_use.mouth_error(open_audio_path(model), z, feats, 0.95)
    assert own != other and own > 0


def test_no_pool_is_a_clear_error(audio_use, tmp_path, capsys):
    with pytest.raises(SystemExit, match="no latent pool"):
        audio_use.main(["some-checkpoint", "--pool", str(tmp_path / "*.safetensors")])
