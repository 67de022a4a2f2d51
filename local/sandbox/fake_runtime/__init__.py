"""A stand-in for instance_runtime in document tests: the same env contract, no model loading.

Zipped by ``local.sandbox.bundles.fake_runtime_bundle`` together with the real systemd templates
of instance_runtime/systemd/, and installed by the install document like the real one.
It serves /health and /status in the seed's format at once. Files in MODEL_PATH steer it:
``FAKE_RUNTIME_LOAD_SECONDS`` (loading that long), ``FAKE_RUNTIME_ERROR`` (/status says error),
``FAKE_RUNTIME_CRASH`` (exits with status 3 at start).
"""

__version__ = "0.0.0+sandbox"
