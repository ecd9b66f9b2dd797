"""Make or connect a Dask distributed client for a pipeline stage.

``--workers j`` -> a LocalCluster on this machine (threads by default: right for I/O-bound stages such as fetch;
``processes=True`` for CPU-bound ones); ``--scheduler ADDR`` -> an existing cluster (``tcp://host:8786``), whose
workers must see the same paths (shared disk) as this process.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: glibc malloc settings (its documented environment tunables) of the worker processes :func:`dask_client`
#: starts. A repack task allocates and frees several 2-8 MB blocks per frame (the AVIF decoder's planes and RGB
#: output, the encoded chunk). Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes
#: glibc's mmap threshold at 128 KiB, so each such block is a fresh ``mmap`` that the kernel faults in and
#: zeroes page by page. With these settings blocks up to 32 MiB (the largest mmap threshold glibc takes) come
#: from the heap and up to 16 MiB of free heap top are kept. ``benchmarks/repack.py`` measures it (row "Dask's
#: malloc"); ``repack_tasks.check_malloc_env`` warns in a worker started without them.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**20)}


@contextmanager
def dask_client(
    workers: int = 8,
    *,
    processes: bool = False,
    scheduler: str | None = None,
    memory_limit: str | int | None = "auto",
) -> Iterator:
    """Yield a ``distributed.Client``; closes what it created on exit.

    workers: total concurrent tasks. With ``processes=False`` one worker process-less worker with ``workers``
    threads; with ``processes=True`` ``min(workers, cpu_count)`` worker processes sharing ``workers`` threads.
    memory_limit: per worker process (Dask syntax, e.g. ``"2GiB"``; ``"auto"`` splits the machine's RAM).
    scheduler: address of a running scheduler; when given, ``workers``/``processes`` are ignored.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        log.info("connecting to Dask scheduler %s", scheduler)
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if processes:
        n = max(1, min(workers, os.cpu_count() or 1))
        threads = math.ceil(workers / n)
    else:
        n, threads = 1, workers
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # distributed logs every connection at INFO; keep the user's terminal for our own messages
        logging.getLogger("distributed").setLevel(logging.WARNING)
    with (
        # The workers' statistical profiler samples every thread's stack every 10 ms: measurable CPU with many
        # busy I/O threads on few cores, and nothing we use.
        dask.config.set({"distributed.worker.profile.enabled": False}),
        # set in each worker process's environment before it starts (Dask's documented hook)
        dask.config.set(
            {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()}
        ),
        LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=processes,
            memory_limit=memory_limit,
            dashboard_address=":0",  # a free port: never clashes with another cluster's 8787
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info(
            "LocalCluster: %d worker(s) x %d thread(s), processes=%s, dashboard %s",
            n, threads, processes, cluster.dashboard_link,
        )  # fmt: skip
        yield client
