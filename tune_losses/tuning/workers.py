"""Starting Ray for a sweep: locally (all of this machine's CPUs, or num_cpus) or by address."""

from __future__ import annotations


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             log_to_driver=verbose > 1, configure_logging=verbose > 1)
