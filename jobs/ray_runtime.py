"""How every job reaches Ray: the cluster in RAY_ADDRESS (set by `ray job submit` and by users), else a local one."""
import os


def init_ray(num_cpus: int | None = None):
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else num_cpus, log_to_driver=True)
    return ray
