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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A synthetic corpus (8 takes, seed 0, with WebDataset shards) generated once per session; treat it as
    read-only. Its layout and truth files are described in pipelines/corpus.py."""
    from pipelines.corpus import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), 8, seed=0, webdataset=True).parent
