"""The sandbox: a local stand-in for the GPU instance behind SSM.

``Sandbox`` lays out an instance's folders under a temporary root and registers it with
``agent``, which makes moto's SSM Run Command execute the project's documents there for real,
with shims for systemctl, journalctl, sudo and (optionally) nvidia-smi.
"""

from local.sandbox.documents import (
    DocumentRun,
    register_documents,
    run_document,
    send_document,
    wait_invocation,
)
from local.sandbox.sandbox import Sandbox, free_port, port_open, wait_for_port

__all__ = [
    "DocumentRun",
    "Sandbox",
    "free_port",
    "port_open",
    "register_documents",
    "run_document",
    "send_document",
    "wait_for_port",
    "wait_invocation",
]
