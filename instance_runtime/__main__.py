"""``python -m instance_runtime``: the systemd unit's ExecStart."""

from __future__ import annotations

import logging

import uvicorn

from instance_runtime.app import create_app
from instance_runtime.settings import RuntimeSettings


def main() -> None:
    settings = RuntimeSettings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # One process owns the GPU and the model: never several workers.
        workers=1,
        # Let in-flight generations finish on SIGTERM, but not past systemd's stop timeout.
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
