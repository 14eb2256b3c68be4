"""rest_fast in other frameworks: ``pipecat`` (a video service for voice agents; the optional
``pipecat`` extra, imported only when used)."""
