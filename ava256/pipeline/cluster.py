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
