"""How every job reaches Ray, and the paths it reads and writes, standalone or under `ray job submit`.

Ray: the cluster in RAY_ADDRESS when it is set (`ray job submit` sets it to the cluster's GCS address for the job's
driver; users set it to `<head-ip>:6379`, or `auto` for a cluster started on this machine), else a new local Ray.
Never "whatever cluster this machine ran last": Ray's own default (address=None) attaches to the cluster recorded
in /tmp/ray/ray_current_cluster, which on a shared machine may be someone else's.
"""
import errno
import logging
import os
from pathlib import Path

# Set by the Ray Jobs supervisor in the environment of a submitted job's entrypoint.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# "1" (`pave --verbose`, jobs/cli.py): Ray's own logs in full. Else quiet: our lines, Ray's warnings and errors.
VERBOSE_ENV = "PAVE_VERBOSE"
# Loggers of Ray modules, named by module: Ray's token authentication set-up, and Ray Train's helper actor that
# removes a run's placement group should its controller die
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
TRAIN_REPORT_MODULE = ("train", "v2", "_internal", "execution", "context.py")  # in ray's package directory


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def submitted_job() -> bool:
    """True inside the entrypoint of a `ray job submit` job (its cwd is then a temporary copy of the working_dir)."""
    return JOB_CONFIG_ENV in os.environ


def init_ray(num_cpus: int | None = None):
    """Connect to RAY_ADDRESS or start a local Ray (with `num_cpus` logical CPUs when given); idempotent. Unless
    verbose(), Ray logs only its warnings and errors, in this process and in the job's workers (quiet_worker);
    the workers' output still reaches this process (log_to_driver): rank 0's progress lines are a worker's."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address and address.startswith(("http://", "https://")):
            raise SystemExit(
                f"RAY_ADDRESS={address} is a dashboard / Jobs API address: it is what `ray job submit` talks to, not "
                "something a driver can join. Submit the command instead (`ray job submit --working-dir . "
                "--runtime-env runtime_env.yaml -- pave ...`), or set RAY_ADDRESS to the cluster's GCS address "
                "(<head-ip>:6379) on a cluster node, or unset it to run on a local Ray.")
        loud = verbose()
        if not loud:
            quiet_driver()
        ray.init(address=address or "local", num_cpus=None if address else num_cpus, log_to_driver=True,
                 logging_level=logging.INFO if loud else logging.WARNING,  # this process's "ray" logger
                 runtime_env={"worker_process_setup_hook": f"{__name__}.{'setup_worker' if loud else 'quiet_worker'}"})
    return ray


def quiet_driver() -> None:
    """Off this process's console: Ray's notice at every start of a local Ray that token authentication is on (its
    default) and how to turn it off, and Ray Data's INFO lines (each dataset's plan, its progress every 10 s when
    stdout is not a terminal), which its log file keeps; progress bars on a terminal stay."""
    import ray.data  # which configures its logger, named after it

    logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)
    for handler in logging.getLogger(ray.data.__name__).handlers:
        if handler.name == "console":  # the handler of Ray Data's logging config that prints
            handler.setLevel(logging.WARNING)


def setup_worker() -> None:
    """Run in every worker process of the job as it starts (Ray's worker_process_setup_hook). Ray's state API, which
    Ray Train's placement-group cleaner polls, looks for the cluster in RAY_ADDRESS, else on this host, and fails
    (a traceback) where the host runs two Ray instances: give it this worker's own cluster."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def quiet_worker() -> None:
    """setup_worker, and Ray's loggers in the worker from WARNING up (Ray Train's own: the logging_config that
    training/launch.py gives it); the cleaner's from ERROR up: without a dashboard (include_dashboard=False) its state
    queries fail and it warns every second."""
    import ray

    setup_worker()
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)
    # Ray Train's worker logs "Reporting training result" with every report's metrics on a logger named by its file
    # (getLogger(__file__)), outside "ray.train" and so out of Ray Train's logging_config's reach
    logging.getLogger(os.path.join(os.path.dirname(ray.__file__), *TRAIN_REPORT_MODULE)).setLevel(logging.WARNING)
    hide_progress_bars()


def hide_progress_bars() -> None:
    """No transformers / huggingface_hub progress bars (loading or saving a model) unless the environment asks for
    them: before transformers is imported, which reads it."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def ray_log_level() -> str:
    """The level of Ray's own loggers (Ray Train's INFO lines: the worker group starting, every report's metrics,
    every checkpoint) for what this process starts: INFO only when verbose()."""
    return "INFO" if verbose() else "WARNING"


def gpus_pending(ray, asked: str, instead: str) -> bool:
    """For a job that asks for GPUs (`asked`: the flag and value that did): whether the cluster has none yet, so that
    its workers wait for GPU nodes to join. On a local Ray none ever will and the job would wait forever: SystemExit
    saying so and what to do `instead`."""
    if ray.cluster_resources().get("GPU"):
        return False
    if not os.environ.get("RAY_ADDRESS"):
        raise SystemExit(f"{asked}: this machine has no GPU; {instead}")
    return True


def output_path(path: str, flag: str, urls: bool = False) -> str:
    """Where a job writes or reads: an absolute local path, or (urls=True: what is reached through fsspec, as the
    feature store, a run directory and annotations are) a URL. Other outputs are written with plain file I/O and Ray
    Train workers read the base model from them, so they need a filesystem every node mounts (NFS/EFS at the same
    path everywhere), not a URL. Under `ray job submit` a relative path is refused: it would land in the job's
    temporary copy of the working directory on whichever node ran the driver, where nobody looks and which Ray
    deletes."""
    if "://" in path:
        if urls:
            return path
        raise SystemExit(f"{flag} {path}: must be a directory path (on a filesystem every node mounts, e.g. NFS/EFS "
                         "at the same path everywhere), not a URL")
    if submitted_job() and not os.path.isabs(path):
        alternative = ", or a URL" if urls else ""
        raise SystemExit(f"{flag} {path}: relative paths are not allowed in a submitted job (its working directory "
                         f"is a temporary copy); pass an absolute path on storage every node mounts{alternative}")
    return str(Path(path).resolve())


def output_dir(path: str, flag: str, urls: bool = False) -> str:
    """output_path for a directory the command creates: a file in its way is refused before any work, without
    creating anything (a refused command leaves nothing behind)."""
    resolved = output_path(path, flag, urls)
    if "://" not in resolved:
        existing = next(p for p in (Path(resolved), *Path(resolved).parents) if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file", resolved)  # jobs/cli.py says it
    return resolved


def base_model_path(path: str, flag: str = "--base-model") -> str:
    """A local LLaVA-OneVision directory (save_pretrained layout), absolute; refused with one line when it is not,
    before transformers takes a missing path for a Hub repo id (no Hub here, and its error is a traceback)."""
    if not (Path(path) / "config.json").is_file():
        raise SystemExit(f"{flag} {path}: no config.json there; expected a local LLaVA-OneVision directory "
                         "(save_pretrained layout)")
    return str(Path(path).resolve())
