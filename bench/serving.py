"""The server the serving benchmarks call: `rest-fast serve` in its own process."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve_process(*args: str):
    """`rest-fast serve --port 0 ARGS` in its own process, as users run it, plus
    REST_FAST_SERVE_ARGS (e.g. "--decoder light"); yields its URL once it listens."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "rest_fast.cli", "serve", "--port", "0", *args,
                             *os.environ.get("REST_FAST_SERVE_ARGS", "").split()], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"rest-fast serve exited with {proc.returncode}")
            if m := re.search(r"open (http://\S+/)", line):
                url = m.group(1)
        if url is None:
            raise RuntimeError("rest-fast serve did not listen within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
