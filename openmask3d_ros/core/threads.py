"""One place that sets how many CPU threads the numeric libraries use.

torch, OpenMP and BLAS each start a pool as large as the machine by default; on a small shared
robot computer they oversubscribe the cores (measured on 2 cores: ``project()`` 32.7 ms a frame
with default pools against 3.5 ms with one OpenMP thread). Here every pool gets the same count:

* ``OPENMASK3D_THREADS`` in the environment, if set (wins over the configuration);
* else the ``threads`` configuration key, when > 0;
* else the cores this process may use (CPU affinity and cgroup quota) minus one left for the
  robot's other processes (SLAM, drivers, control), at least one.

torch is only touched when it is already imported: importing it here would cost seconds and
hundreds of MB for stand-in runs and queries that never use it. Libraries loaded later read the
``OMP_NUM_THREADS``-style variables set here.
"""
from __future__ import annotations

import logging
import math
import os
import sys

log = logging.getLogger(__name__)

ENV_VAR = "OPENMASK3D_THREADS"
_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_applied: int | None = None


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup quota, None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:             # cgroup v2: "max 100000"
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fq, \
                open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fp:
            quota_us, period_us = int(fq.read()), int(fp.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """Cores available minus one (kept for the robot's other processes), at least one."""
    return max(1, available_cores() - 1)


def resolve_threads(configured: int = 0) -> int:
    """The thread count to use: ``$OPENMASK3D_THREADS``, else ``configured`` (> 0), else default.

    A malformed environment value is a ValueError naming the variable.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"{ENV_VAR} must be a positive integer, got {env!r}")
        return n
    if configured < 0:
        raise ValueError(f"threads must be >= 0 (0 = automatic), got {configured}")
    return configured if configured > 0 else default_threads()


def configure_threads(configured: int = 0) -> int:
    """Set torch (if imported), OpenMP and BLAS pools to one count; returns the count.

    Safe to call repeatedly; only the first call and changes are logged.
    """
    global _applied
    n = resolve_threads(configured)
    for var in _POOL_VARS:          # for libraries loaded after this call
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n)  # pools already loaded (numpy's OpenBLAS, libgomp, ...)
    except ImportError:             # optional at run time: the environment variables still apply
        log.debug("threadpoolctl not installed; only environment variables set")
    torch = sys.modules.get("torch")
    if torch is not None:
        apply_torch_threads(n)
    if n != _applied:
        log.info("CPU threads: %d (of %d cores available)", n, available_cores())
    _applied = n
    return n


def apply_torch_threads(n: int | None = None) -> None:
    """Give torch's intra-op pool ``n`` threads (default: the last configured count).

    Call after importing torch when :func:`configure_threads` ran before the import.
    """
    n = n if n is not None else _applied
    if n is None:
        return
    import torch
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
