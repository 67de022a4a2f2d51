"""asoba-inference: the FastAPI inference service that runs on the GPU instance.

Configured only by environment variables (see ``instance_runtime.settings``) and started by
systemd as ``python -m instance_runtime``.
"""

__version__ = "0.1.0"

SERVICE_NAME = "asoba-inference"

__all__ = ["SERVICE_NAME", "__version__"]
