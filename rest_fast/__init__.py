"""rest-fast: REST streaming talking-head diffusion. The CLI lives in rest_fast.cli; the
readable specification in the sibling package `reference`."""
__version__ = "0.1.0"
