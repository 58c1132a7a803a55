"""Shared fixtures. Ray: one local instance per test session, with bounded logical CPUs so that Ray Train
workers and Ray Data tasks never starve each other on a 2-core machine (see DESIGN pitfalls)."""
import os

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
