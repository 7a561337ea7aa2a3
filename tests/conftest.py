"""Test set-up: 4 emulated CPU devices (for sharding tests) before JAX starts."""

import os

# Must happen before the JAX backend initialises; harmless for single-device tests.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=4").strip()
