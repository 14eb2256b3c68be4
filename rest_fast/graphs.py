"""CUDA graphs of a whole chunk: Algorithm 1's inner loop (8 steps x all CFG branches, the CFG +
Euler updates and the ring-slot advance) for n open streams, captured once and replayed.

What makes replay valid from chunk to chunk (as in gpt-fast's static KV cache): every tensor the
loop reads or writes is a static buffer (the generator's z / audio / scales / active inputs, the
caches, the RoPE and timestep tables), and what changes between chunks (which ring slots hold the
previous chunks, how many a row has, which rows are active) lives in device tensors that the
kernels read, never in Python values baked into the graph. One graph is kept per number of open
streams, all sharing one memory pool.

When graphs are captured: ``capture_all`` (``StreamingGenerator.warmup``) captures every count
up front; otherwise a count is captured the first time it runs, which stalls that tick (eager
warm-ups, the capture itself, and a device synchronisation). A capture that fails (out of memory,
an operation that cannot be captured) leaves the inputs as they were, warns once, and that count
runs eagerly from then on: slower, never wrong.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .model import FastDiT


class CudaGraphRecorder:
    """Records a function as a CUDA graph; all graphs of one recorder share a memory pool."""

    def __init__(self):
        self.pool = None

    def warm_up(self, fn: Callable[[], None], times: int) -> None:
        """Eager runs on a side stream before capture (Triton compilation, cuBLAS handles), as
        torch.cuda.graphs' documentation asks."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(times):
                fn()
        torch.cuda.current_stream().wait_stream(side)

    def record(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Capture ``fn`` and return what replays it."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            fn()
        self.pool = graph.pool()
        return graph.replay


class EagerRecorder:
    """ChunkGraphs' bookkeeping without CUDA: the "replay" calls the recorded function again, on
    the same views of the same static buffers, which is what a graph's replay computes. For tests
    and the CPU smoke run of bench/gpu_proof.py; it makes nothing faster."""

    def warm_up(self, fn: Callable[[], None], times: int) -> None:
        for _ in range(times):
            fn()

    def record(self, fn: Callable[[], None]) -> Callable[[], None]:
        return fn


class ChunkGraphs:
    def __init__(self, fast: FastDiT, warmup: int = 2, recorder=None):
        self.fast, self.warmup = fast, warmup
        self.recorder = recorder if recorder is not None else CudaGraphRecorder()
        self.replays: dict[int, Callable[[], None]] = {}
        self.failed: set[int] = set()     # counts whose capture failed: they run eagerly

    def _args(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor):
        rows = n * self.fast.branches
        return z[:n], audio[:rows], scales[:n], active[:rows]

    def capture(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> None:
        """Capture the chunk for n streams. Warm-up runs happen with every row inactive, so they
        change no stream's caches (see FastDiT.denoise); the inputs they overwrite (z, active)
        are restored afterwards, whether the capture succeeds or raises."""
        args = self._args(n, z, audio, scales, active)
        saved_z, saved_active = args[0].clone(), active.clone()
        active.zero_()
        try:
            # Compilation happens on the first capture; later counts need one run for their shapes.
            self.recorder.warm_up(lambda: self.fast.denoise(*args), self.warmup if not self.replays else 1)
            self.replays[n] = self.recorder.record(lambda: self.fast.denoise(*args))
        finally:
            args[0].copy_(saved_z)
            active.copy_(saved_active)

    def capture_all(self, capacity: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> None:
        """Capture every count 1..capacity not captured yet (``StreamingGenerator.warmup``)."""
        for n in range(1, capacity + 1):
            self._ensure(n, z, audio, scales, active)

    def _ensure(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> bool:
        """Whether count n has a graph, capturing it now if it has none and has not failed."""
        if n not in self.replays and n not in self.failed:
            try:
                self.capture(n, z, audio, scales, active)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                self.failed.add(n)
                warnings.warn(f"CUDA graph capture of a chunk for {n} stream(s) failed ({e}); "
                              f"that many streams run without a graph (slower)", RuntimeWarning)
        return n in self.replays

    def run(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> None:
        """The chunk for n streams on the current contents of the static inputs: the graph's
        replay, or the eager loop where its capture failed."""
        if self._ensure(n, z, audio, scales, active):
            self.replays[n]()
        else:
            self.fast.denoise(*self._args(n, z, audio, scales, active))
