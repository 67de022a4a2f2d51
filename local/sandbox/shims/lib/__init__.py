"""The sandbox's stand-ins for systemd and the NVIDIA driver, one module per tool (tests and demos only).

The executables in ``shims/`` run with ``python3 -S`` (standard library only) and import this as
the top-level package ``lib``, while ``sandbox.py`` imports it as ``local.sandbox.shims.lib``:
hence relative imports only.
"""
