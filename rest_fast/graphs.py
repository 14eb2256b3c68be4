"""CUDA graphs of a whole chunk: Algorithm 1's inner loop (8 steps x all CFG branches, the CFG +
Euler updates and the ring-slot flip) for n open streams, captured once and replayed.

What makes replay valid from chunk to chunk (as in gpt-fast's static KV cache): every tensor the
loop reads or writes is a static buffer (the generator's z / audio / scales / active inputs, the
caches, the RoPE and timestep tables), and what changes between chunks (which ring slot holds the
previous chunk, whether a row has one, which rows are active) lives in device tensors that the
kernels read, never in Python values baked into the graph. One graph is kept per number of open
streams, all sharing one memory pool.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .model import FastDiT


class ChunkGraphs:
    def __init__(self, fast: FastDiT, warmup: int = 2):
        self.fast, self.warmup = fast, warmup
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def _args(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor):
        rows = n * self.fast.branches
        return z[:n], audio[:rows], scales[:n], active[:rows]

    def capture(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> None:
        """Capture the chunk for n streams. Warm-up runs (Triton compilation, cuBLAS handles)
        happen with every row inactive, so they change no stream's caches (see
        FastDiT.denoise); the inputs they overwrite (z, active) are restored before replay."""
        args = self._args(n, z, audio, scales, active)
        saved_z, saved_active = args[0].clone(), active.clone()
        active.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fast.denoise(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.fast.denoise(*args)
        self.pool = graph.pool()
        self.graphs[n] = graph
        args[0].copy_(saved_z)
        active.copy_(saved_active)

    def run(self, n: int, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> None:
        """Replay the chunk for n streams on the current contents of the static inputs."""
        if n not in self.graphs:
            self.capture(n, z, audio, scales, active)
        self.graphs[n].replay()
