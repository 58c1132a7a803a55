"""Real Ray clusters on this machine for the cluster tests: a head and any number of worker nodes, each a separate
`ray start --block` process (its own raylet, object store, agents and workers), as on a cluster of several hosts.

What several nodes on one host need:
- loopback (`--node-ip-address 127.0.0.1`) and every port of every node its own (free ones, picked here), workers
  on OS-chosen ports (`--min-worker-port 0`), so that two raylets never hand out the same worker port;
- a temp dir per node (Ray takes `--temp-dir` per node): its sockets, logs, spill files and the runtime_env
  downloads (the job's working_dir) are that node's alone, as another host's disk would be; short paths, since
  Ray's unix sockets live there (107-byte limit);
- a small object store per node, and token auth with this cluster's own token (RAY_AUTH_TOKEN for every node and
  client; the Jobs API and the state API take it as a bearer header).

Nodes are told apart by a custom resource named after the node (`{"node_a": 1}`), which the tests read back from
Ray's state API. A node is stopped through the `ray start --block` process this module started, or killed with its
whole process tree at once (a lost host); never with `ray stop`, which kills every Ray process of this user on the
machine, other test sessions' included."""
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and the `pave` console script
JOB_TIMEOUT_S = 420
START_TIMEOUT_S = 180
WORKER_CPUS = 2  # per worker node of the tests' cluster (conftest.py): a training worker asks for all of them
FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


class ClusterError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=20)


def stop_trees(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each `ray start --block` (all at once: each takes seconds) stops the processes it started; then
    anything of their process trees still alive (workers, job drivers) is killed by pid."""
    families = [p for proc in procs for p in _tree(proc)]
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    _, alive = psutil.wait_procs(families, timeout=20)
    _kill(alive)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to `ray start --block` and every process under it (raylet, object store, agents, workers) in one go:
    the node is gone as a host that loses power is, with no chance to say goodbye."""
    family = [psutil.Process(proc.pid), *_tree(proc)]
    for p in family:  # stop them all first, so that none reacts to another's death (e.g. by cleaning up)
        try:
            p.suspend()
        except psutil.NoSuchProcess:
            pass
    _kill(family)
    proc.wait(timeout=10)


@dataclass
class Node:
    name: str  # also its custom resource
    process: subprocess.Popen
    temp: Path
    log: Path
    node_id: str = ""  # Ray's, once it registered

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@dataclass
class Cluster:
    """A head (no job work unless given CPUs) plus worker nodes added by add_node; `gcs` is what RAY_ADDRESS holds
    for a driver that joins, `dashboard` the Jobs and state API, `env` the environment of a driver on this machine
    (PATH has `pave`, RAY_AUTH_TOKEN the token)."""

    root: Path
    object_store_bytes: int
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: dict[str, Node] = field(default_factory=dict)
    gcs: str = ""
    dashboard: str = ""
    client: JobSubmissionClient | None = None

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    def workers(self) -> list[Node]:
        """The worker nodes started and not killed."""
        return [node for name, node in self.nodes.items() if name != "head"]

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def _start(self, name: str, num_cpus: float, resources: dict, head_args: list[str]) -> Node:
        temp = self.root / name
        temp.mkdir()
        agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(6)
        log = temp / "ray_start.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                 "--num-gpus=0", f"--resources={json.dumps(resources)}",
                 f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={temp}",
                 f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
                 f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
                 f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
                 "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats", *head_args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        node = Node(name, process, temp, log)
        self.nodes[name] = node
        return node

    def start_head(self, num_cpus: float = 0) -> Node:
        gcs, dash, client_port = free_ports(3)
        head = self._start("head", num_cpus, {"head": 1}, [
            "--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--ray-client-server-port={client_port}"])
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.client is None:
            if head.process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"ray start --head did not come up:\n{head.output()}")
            try:
                client = JobSubmissionClient(self.dashboard, headers=self.headers)
                client.list_jobs()
                self.client = client
            except Exception:
                time.sleep(1)
        head.node_id = self._wait_registered(head)
        return head

    def add_node(self, num_cpus: float, name: str = "") -> Node:
        """A worker node joining the head, with `num_cpus` logical CPUs and the custom resource {name: 1} (by
        default the next free name of node_a, node_b, ...); returns once Ray lists it alive."""
        name = name or next(f"node_{c}" for c in string.ascii_lowercase if not (self.root / f"node_{c}").exists())
        node = self._start(name, num_cpus, {name: 1}, [f"--address={self.gcs}"])
        node.node_id = self._wait_registered(node)
        return node

    def ensure_workers(self, count: int, num_cpus: float) -> "Cluster":
        """This cluster once it has `count` worker nodes: nodes of `num_cpus` are added for those killed."""
        while len(self.workers()) < count:
            self.add_node(num_cpus)
        return self

    def kill_node(self, name: str) -> Node:
        """The node lost: its whole process tree SIGKILLed at once (see kill_tree)."""
        node = self.nodes.pop(name)
        kill_tree(node.process)
        return node

    def _wait_registered(self, node: Node) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"node {node.name} did not join:\n{node.output()}")
            alive = {n.node_id: n for n in self.list("nodes", ("state", "=", "ALIVE"))}
            found = [node_id for node_id, n in alive.items() if n.resources_total.get(node.name)]
            if found:
                return found[0]
            time.sleep(1)

    def list(self, resource: str, *filters: tuple, limit: int = 10000) -> list:
        """Ray's own state (ray.util.state) of `resource` ("nodes", "tasks", "actors", ...), through the head's
        dashboard."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(self.dashboard, headers={**self.headers, "Content-Type": "application/json"})
        options = ListApiOptions(filters=list(filters), limit=limit, detail=True)
        return client.list(StateResource(resource), options, raise_on_missing_output=False)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> node name, for every node this cluster started (dead ones included)."""
        return {n.node_id: name for n in self.list("nodes") for name in n.resources_total
                if name == "head" or name.startswith("node_")}

    def status(self) -> str:
        """`ray status`: the nodes, and the resources in use and asked for."""
        ran = subprocess.run([str(BIN / "ray"), "status", f"--address={self.gcs}"], env=self.env, capture_output=True,
                             text=True, timeout=60)
        return ran.stdout + ran.stderr

    def close(self) -> None:
        stop_trees([node.process for node in self.nodes.values()])
        self.nodes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(head_cpus: float, workers: dict[str, float] | None = None,
                  object_store_bytes: int = 150 << 20) -> Cluster:
    """A head with `head_cpus` CPUs and worker nodes {name: CPUs}; closed (every process stopped, temp dirs
    removed) by the caller, or here when it cannot start."""
    # Short root: Ray's unix sockets live under the node temp dirs. Its own dirs also keep the cluster out of
    # /tmp/ray/ray_current_cluster, so nobody's `ray.init()` attaches to it by accident.
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="pave-rc-", dir="/tmp")), object_store_bytes)
    try:
        cluster.start_head(head_cpus)
        for name, cpus in (workers or {}).items():
            cluster.add_node(cpus, name)
    except BaseException:
        cluster.close()
        raise
    return cluster


def runtime_env(**extra) -> dict:
    """What `ray job submit --working-dir <repo> --runtime-env runtime_env.yaml` sends."""
    return {**yaml.safe_load((REPO / "runtime_env.yaml").read_text()), "working_dir": str(REPO), **extra}


def submit(cluster: Cluster, entrypoint: str, **options) -> str:
    """`ray job submit` without waiting: the submission id."""
    return cluster.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(), **options)


def wait_job(cluster: Cluster, job_id: str, expect: JobStatus = JobStatus.SUCCEEDED,
             timeout_s: float = JOB_TIMEOUT_S) -> str:
    """Wait (bounded: a job still running then is stopped and the wait fails), check the final status; the job's
    logs."""
    client = cluster.client
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in FINAL:
        if time.monotonic() > deadline:
            logs, usage = client.get_job_logs(job_id), cluster.status()
            client.stop_job(job_id)
            raise AssertionError(f"{job_id}: still {status} after {timeout_s:.0f} s\n{logs[-8000:]}\n{usage}")
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    info = client.get_job_info(job_id)
    assert status == expect, f"{info.entrypoint}: {status}, {info.message}\n{logs[-8000:]}"
    return logs


def run_job(cluster: Cluster, entrypoint: str, expect: JobStatus = JobStatus.SUCCEEDED, **options) -> str:
    """Submit, wait (bounded), check the final status; the job's logs."""
    return wait_job(cluster, submit(cluster, entrypoint, **options), expect)
