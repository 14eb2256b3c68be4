"""A checkpoint's provenance decides which samplers its weights serve: a distilled student refuses
the ones it was not made for (they draw noise), and runs them under ``force`` with a warning."""
import json
import warnings

import numpy as np
import pytest

from reference.checkpoint import CONFIG_NAME, load_checkpoint, load_config
from reference.config import ProvenanceConfig, RestConfig
from reference.evaluate import evaluate
from reference.pipeline import ReferenceStream, SamplerError, generate, untrained_sampler
from tests.conftest import distilled_config, make_tiny_config, speech_like


@pytest.mark.parametrize("steps, mode, scale, refused", [
    (2, "none", 1.0, False),    # what it learnt
    (1, "none", 1.0, False),    # fewer steps blur, but stay faces
    (2, "joint", 2.0, False),   # Joint CFG up to the scale it was checked at
    (2, "joint", 1.5, False),
    (3, "none", 1.0, True),     # steps beyond what it learnt
    (8, "none", 1.0, True),
    (2, "joint", 2.5, True),    # a scale the distillation did not see
    (2, "joint", 6.0, True),
    (2, "multi", 1.0, True),
])
def test_a_distilled_student_serves_what_it_learnt(steps, mode, scale, refused):
    assert (untrained_sampler(distilled_config(), steps, mode, scale) is not None) == refused


@pytest.mark.parametrize("kind", ["guidance_dropout", "unknown"])
def test_weights_trained_with_condition_dropout_or_of_unknown_making_serve_any_sampler(kind):
    cfg = make_tiny_config()
    cfg.provenance = ProvenanceConfig(kind=kind)
    for steps, mode, scale in [(20, "multi", 20.0), (8, "joint", 6.0), (1, "none", 1.0)]:
        assert untrained_sampler(cfg.validate(), steps, mode, scale) is None


def test_the_refusal_names_the_checkpoint_what_it_is_and_what_to_do(distilled_dir):
    model = load_checkpoint(distilled_dir)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(SamplerError) as refused:
        ReferenceStream(model, image, steps=8, cfg_mode="joint", cfg_scale=6.0)
    message = str(refused.value)
    for part in (str(distilled_dir), "distilled to 2 step(s) of one branch", "8 steps",
                 "Joint CFG at scale 6", "--checkpoint undistilled", "--force"):
        assert part in message, (part, message)
    assert "\n" not in message


def test_force_runs_it_with_a_warning(distilled_dir):
    model = load_checkpoint(distilled_dir)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.warns(UserWarning, match="running it anyway"):
        frames = generate(model, image, speech_like(0.5), steps=4, force=True)
    assert frames.shape[1:] == (64, 64, 3)
    with warnings.catch_warnings():           # and what it learnt runs without one
        warnings.simplefilter("error")
        generate(model, image, speech_like(0.5))


def test_evaluate_refuses_before_any_work_and_reports_a_forced_sampler(distilled_dir, monkeypatch):
    model = load_checkpoint(distilled_dir)
    monkeypatch.setattr("reference.evaluate.generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(SamplerError, match="Multi CFG"):
        evaluate(model, identities=1, seconds=1.0, cfg_mode="multi")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="running it anyway"):
        report = evaluate(model, identities=1, seconds=1.0, steps=3, force=True)
    assert "3 steps" in report["sampler"]["outside_training"]
    assert evaluate(model, identities=1, seconds=1.0)["sampler"]["outside_training"] is None


def test_a_config_whose_own_sampler_contradicts_its_provenance_is_refused():
    cfg = distilled_config().to_dict()
    cfg["sampling"]["steps"] = 8
    with pytest.raises(ValueError, match="contradicts its provenance"):
        RestConfig.from_dict(cfg)
    cfg = make_tiny_config().to_dict()
    cfg["provenance"]["kind"] = "trained somehow"
    with pytest.raises(ValueError, match="provenance.kind"):
        RestConfig.from_dict(cfg)


def test_provenance_is_saved_and_an_older_config_loads_as_unknown(distilled_dir, tmp_path):
    assert load_config(distilled_dir).provenance == distilled_config().provenance
    old = json.loads((distilled_dir / CONFIG_NAME).read_text())
    del old["provenance"]                       # written before the field existed
    (tmp_path / CONFIG_NAME).write_text(json.dumps(old))
    assert load_config(tmp_path).provenance.kind == "unknown"
