"""A distilled student at another chunk window, bundled as the default is: the default's VAE,
both decoders and SpeechAE with the student's DiT, its window (chunk_latent_frames, prev_chunks,
the speech history) and provenance, two steps of one branch (Joint CFG checked up to 2, as the
default), the full decoder, fp16.

    python3 tools/bundle_windowed_student.py STUDENT OUT_DIR

Used by tools/train_low_latency_weights.sh and tools/train_two_frame_weights.sh."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from reference.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from reference.train import rebuild_with_config  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[1] / "rest_fast" / "assets" / "rest-cpu"


def bundle(student_dir: str, out: str) -> Path:
    student = load_checkpoint(student_dir)
    base = load_checkpoint(DEFAULT)                           # VAE, both decoders, SpeechAE
    cfg = base.cfg
    cfg.chunk_latent_frames, cfg.prev_chunks = student.cfg.chunk_latent_frames, student.cfg.prev_chunks
    cfg.speech.left_context_frames = student.cfg.speech.left_context_frames
    model = rebuild_with_config(base, cfg.validate())
    model.dit.load_state_dict(student.dit.state_dict())
    model.cfg.sampling.steps, model.cfg.sampling.cfg_scale = 2, 2.0
    model.cfg.provenance = student.cfg.provenance
    model.cfg.provenance.joint_scale_checked = 2.0
    model.use_decoder("full")
    return save_checkpoint(model, out, dtype=torch.float16)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    print(bundle(sys.argv[1], sys.argv[2]))
