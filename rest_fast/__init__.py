"""rest-fast: REST streaming talking-head diffusion, fast.

    from rest_fast import StreamingGenerator     # the streaming API (rest_fast.streaming)
    from rest_fast import apply_kernels          # fused training ops in a reference model

Fused ops live in rest_fast.ops, the fast DiT in rest_fast.model, the CLI in rest_fast.cli; the
readable specification is the sibling package ``reference``. Heavy imports wait until used.
"""
__version__ = "0.1.0"
__all__ = ["StreamingGenerator", "Stream", "apply_kernels"]


def __getattr__(name):
    if name in ("StreamingGenerator", "Stream"):
        from . import streaming
        return getattr(streaming, name)
    if name == "apply_kernels":
        from .training import apply_kernels
        return apply_kernels
    raise AttributeError(f"module 'rest_fast' has no attribute {name!r}")
