"""Shared fixtures. Ray: one local instance per test session, with bounded logical CPUs so that Ray Train
workers and Ray Data tasks never starve each other on a 2-core machine (see docs/DESIGN.md, Pitfalls)."""
import os

import pytest
from s3server import CREDENTIALS

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Credentials for the loopback S3 server, as a cluster's nodes have theirs: set before the session's Ray starts, so
# that its workers inherit them. The endpoint is never set here: S3 tests pass it (--storage.endpoint-url, storage
# options) or set it in a subprocess's environment, so that nothing reaches a server by accident.
for key, value in CREDENTIALS.items():
    os.environ.setdefault(key, value)
os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (`make test` runs the suite in two processes)
def pytest_xdist_make_scheduler(config, log):
    """Whole test files to each pytest process, so that a file's module fixtures are built once, and the files of
    tests/cluster together, so that they share the session's cluster (tests/cluster/conftest.py)."""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndTheClusterFolder(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/cluster" if path.startswith("tests/cluster/") else path

    return FilesAndTheClusterFolder(config, log)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if ray.is_initialized():  # a command that a test ran in this process before started a Ray of its own
        ray.shutdown()
    # With its dashboard: Ray Train's placement-group cleaner asks the state API at the dashboard address the cluster
    # records, which without one is 127.0.0.1:8265, where another Ray of this host may answer (docs/DESIGN.md,
    # Pitfalls); a dashboard takes a free port when 8265 is taken.
    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False, configure_logging=False)
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


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 over HTTP on 127.0.0.1 (tests/s3server.py), one per session: make buckets with `s3_bucket`."""
    from s3server import S3Server

    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on the session's S3 server (s3server.Bucket: url, storage_options, env)."""
    return s3_server.bucket()


@pytest.fixture
def s3_proxy(s3_server):
    """A loopback proxy in front of the session's S3 server that logs every request (s3server.Proxy); its bucket
    for this test: `s3_proxy.bucket` through the proxy, `s3_proxy.direct` the same bucket without it (for writing
    what the test then reads, faster)."""
    from s3server import Proxy

    proxy = Proxy(s3_server.endpoint)
    proxy.bucket = s3_server.bucket(proxy.endpoint)
    proxy.direct = s3_server.reach(proxy.bucket.url)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def pave(capsys):
    """Run `pave ARGS...` in-process: (exit code, stdout, stderr)."""
    from jobs.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run
