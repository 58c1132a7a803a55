"""One cluster for every test of this folder (tests/cluster/raycluster.py), started once per session: a head without
CPUs, so that job work goes to the worker nodes, and two worker nodes of WORKER_CPUS each. A test that kills a node
leaves the replacement to the next one that needs two workers (`nodes`). The folder's tests run in one pytest worker
(tests/conftest.py), so that they share it."""
import pytest
from raycluster import WORKER_CPUS, Cluster, start_cluster


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    cluster = start_cluster(head_cpus=0, workers={"node_a": WORKER_CPUS, "node_b": WORKER_CPUS})
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def nodes(cluster) -> Cluster:
    """The cluster with two worker nodes: a node an earlier test killed is replaced first."""
    return cluster.ensure_workers(2, WORKER_CPUS)
