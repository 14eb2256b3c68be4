"""Fixtures for rest_fast.serve: a tiny in-process server, and the real `rest-fast serve` with the
bundled weights in a subprocess (loopback only)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference.model import RestModel
from rest_fast import StreamingGenerator
from tests.conftest import make_tiny_config

ROOT = Path(__file__).resolve().parents[3]
PORTRAIT = np.full((64, 64, 3), 90, np.uint8)


def tiny_generator(capacity: int = 2) -> StreamingGenerator:
    return StreamingGenerator(RestModel.random(make_tiny_config(), seed=1).eval(), capacity=capacity)


@contextlib.asynccontextmanager
async def tiny_server(capacity: int = 2, **options):
    """The app on a tiny random model, listening on 127.0.0.1 (an ephemeral port): yields
    (base url, app)."""
    from aiohttp import web
    from rest_fast.serve.app import create_app
    from rest_fast.serve.hub import AvatarHub
    app = create_app(AvatarHub(tiny_generator(capacity)), PORTRAIT, **options)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/", app
    finally:
        await runner.cleanup()


def run(coro, timeout: float = 240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.contextmanager
def serve_subprocess(*args: str, env: dict | None = None):
    """`rest-fast serve --port 0 ARGS` (the bundled weights unless ARGS say otherwise) in its own
    process on 127.0.0.1, ``env`` added to its environment: yields (url, process); terminated (or
    killed) on the way out."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "rest_fast.cli", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    url, seen, deadline = None, [], time.monotonic() + 120
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        seen.append(line)
        if m := re.search(r"open (http://127\.0\.0\.1:\d+/)", line):
            url = m.group(1)
    if url is None:
        proc.kill()
        pytest.fail("rest-fast serve did not start:\n" + "".join(seen))
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def bundled_server():
    """`rest-fast serve --port 0 --capacity 2` with the bundled weights: yields (url, process)."""
    with serve_subprocess("--capacity", "2") as server:
        yield server
