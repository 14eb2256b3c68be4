"""rest_fast.host_memory: freed chunk-sized buffers stay in the process (counted in page faults,
not timed), and the switch turns it off."""
import os
import platform
import subprocess
import sys

import pytest

from rest_fast.host_memory import ENV

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# Stream the bundled light decoder chunk after chunk (its output alone is 19 MB a chunk) and
# print the minor page faults per chunk once it is steady.
SCRIPT = """
import resource, torch
from rest_fast.host_memory import keep_freed_memory
from rest_fast.streaming import bundled_checkpoint
from reference.checkpoint import load_checkpoint
from reference.model import videos_to_uint8
from reference.vae import DecodeState
print(keep_freed_memory())
vae = load_checkpoint(bundled_checkpoint()).vae
decode, state = vae.decoder_for("light"), DecodeState()
z = torch.randn(1, vae.cfg.latent_channels, 3, 8, 8)
with torch.inference_mode():
    for _ in range(3):
        videos_to_uint8(decode(z, state))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        videos_to_uint8(decode(z, state))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def run(env_value: str | None) -> tuple[bool, int]:
    env = dict(os.environ)
    env.pop(ENV, None)
    if env_value is not None:
        env[ENV] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_buffers_are_reused_without_page_faults():
    kept, faults = run(None)
    assert kept
    # A chunk's large buffers, if handed back and faulted in again, are ~10 k pages of 4 KiB.
    assert faults < 2000, faults


def huge_pages_always() -> bool:
    """With transparent huge pages always on, one fault maps 2 MiB, not 4 KiB: far fewer faults."""
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


def test_switched_off_glibc_faults_them_back():
    kept, faults = run("0")   # the behaviour keep_freed_memory exists to avoid (13,792 measured)
    assert not kept
    assert faults > (20 if huge_pages_always() else 5000), faults


def test_streaming_generator_applies_it(tiny_config):
    from reference.model import RestModel
    from rest_fast import StreamingGenerator
    from rest_fast.host_memory import keep_freed_memory
    keep_freed_memory.cache_clear()
    StreamingGenerator(RestModel(tiny_config))
    assert keep_freed_memory.cache_info().currsize == 1
