"""``rest-fast serve``: the live avatar in a browser (WebRTC) and for other services (WebSocket).

    pip install -e ".[serve]"
    rest-fast serve                  # then open http://127.0.0.1:8080/

Layers, each usable alone: ``hub`` (callers' streams on one shared StreamingGenerator, one
batcher), ``media`` (speech to 16 kHz mono; the avatar paced out on one clock as WebRTC tracks),
``app`` (aiohttp: the page, signalling, the WebSocket endpoint, uploads, figures). aiortc and
aiohttp are the optional ``serve`` extra, imported only here.
"""
from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger(__name__)


def missing_extra() -> str | None:
    """One line saying what to install when the ``serve`` extra is missing, else None."""
    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
    except ImportError as e:
        return (f"rest-fast serve needs the 'serve' extra ({e.name} is not installed): "
                "pip install 'rest-fast[serve]' (from a checkout: pip install -e \".[serve]\")")
    return None


async def serve(gen, portrait, *, host: str = "127.0.0.1", port: int = 8080, ready=None,
                cfg_scale: float | None = None, first_seed: int = 0, **app_options) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM). ``ready(url)`` is called once listening;
    ``app_options`` go to ``app.create_app``."""
    from aiohttp import web

    from .app import create_app
    from .hub import AvatarHub
    hub = AvatarHub(gen, cfg_scale=cfg_scale, first_seed=first_seed)
    # Handlers still running 5 s after the sockets and peers are closed are cancelled.
    runner = web.AppRunner(create_app(hub, portrait, **app_options), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    url = f"http://{bound[0] if ':' not in bound[0] else '[' + bound[0] + ']'}:{bound[1]}/"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):   # not the main thread, or not Unix
            pass
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
