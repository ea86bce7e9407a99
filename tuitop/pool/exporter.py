"""The pool's ``/metrics`` (``--metrics-port``), served by prometheus_client.

What a scrape reads, and from where:

* what the workers and the pool count (:mod:`tuitop.metrics`: Tuleap's series, tuitop's
  latency histograms): the files of the pool's private directory, summed by
  prometheus_client's ``MultiProcessCollector``. As a worker is reaped, its files are
  folded into the archive (under the lock every scrape takes to read them): counts stay
  monotonic across recycled and killed workers, and the files stay as many as the live
  processes;
* the pool's own state, read from the pool's parts at scrape time (nothing for the loop
  to keep up to date): workers running and wanted per lane, config reloads and refused
  saves, whether the store answers — each with this pool's name as ``pool``;
* the queue, store-wide (:mod:`.storeseries`): depth and oldest age per lane, dead
  letters, retries waiting. Every pool exports them, so that any one pool scraped is
  enough: the same figures from every pool of a store, to be taken with ``max``, never
  summed.

The HTTP server is prometheus_client's, in threads of its own: the pool's loop never
waits for a scrape. A port that cannot be bound is a :class:`MetricsError` at the start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from tuitop.lanes import Staffing
from tuitop.metrics import Counting, CountingTarget, Counts, fold_into_archive, use_directory
from tuitop.osutil import process_running
from tuitop.pool.options import MetricsOptions, PoolOptions
from tuitop.pool.storeseries import StoreReader, store_series

if TYPE_CHECKING:
    from tuitop.pool.configuration import Configuration
    from tuitop.pool.link import StoreLink
    from tuitop.pool.workers import WorkerSet

DIRECTORY_PREFIX = "tuitop-metrics-"


class MetricsError(Exception):
    """``/metrics`` cannot be served (the port is taken, the address is not this host's)."""


class PoolMetrics:
    """A pool without ``--metrics-port``: nothing is counted, nothing served."""

    counts: Counting = Counting()
    """What the pool itself counts (what it recovers)."""

    def for_workers(self, options: PoolOptions) -> PoolOptions:
        """``options`` with where the workers count."""
        return options

    def serve(self, workers: WorkerSet, config: Configuration, link: StoreLink) -> None:
        """Starts serving, reading the pool's state from these parts."""

    def worker_gone(self, pid: int | None) -> None:
        """A worker was reaped: its counts join the archive."""

    def config_loaded(self, loaded: bool, refused: bool) -> None:
        """The config files were read again (SIGHUP, a save): ``loaded``, or ``refused``."""

    def close(self) -> None:
        """Stops serving and removes what the counts were kept in."""


def open_metrics(
    options: MetricsOptions | None, pool_name: str, logger: logging.Logger
) -> PoolMetrics:
    """The pool's metrics: none without ``options``; else the private directory made (and
    any left by a pool killed before it could remove its own), nothing served yet."""
    if options is None:
        return PoolMetrics()
    return Exporter(options, pool_name, logger)


class Exporter(PoolMetrics):
    """Counts into a private directory and serves ``/metrics`` from it and the pool."""

    def __init__(self, options: MetricsOptions, pool_name: str, logger: logging.Logger) -> None:
        self.options = options
        self.pool_name = pool_name
        self.logger = logger
        sweep_directories()
        # Private (mode 0700): the files hold the topics and the load of the forge.
        self.directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-")
        self.target = CountingTarget(self.directory, pool_name, options.platform)
        use_directory(self.directory)
        self.counts = Counts(self.target)
        self.reloads = 0
        self.refusals = 0
        self._folding = threading.Lock()
        """Held while a scrape reads the files and while a gone worker's are folded."""
        self._files = MultiProcessCollector(None, path=self.directory)  # type: ignore[no-untyped-call]
        self._server: Any = None
        self._store: StoreReader | None = None

    def for_workers(self, options: PoolOptions) -> PoolOptions:
        return dataclasses.replace(options, counting=self.target)

    def serve(self, workers: WorkerSet, config: Configuration, link: StoreLink) -> None:
        registry = CollectorRegistry(auto_describe=False)
        self._store = StoreReader(lambda: config.settings, self.pool_name, lambda: link.store)
        registry.register(_Collector(self, workers, config, link, self._store))
        address, port = self.options.address, self.options.port
        try:
            self._server, _ = start_http_server(port, address, registry)
        except OSError as error:
            self.close()
            raise cannot_serve(address, port, error) from None
        self.logger.info("Metrics on http://%s/metrics", where(address, port))

    def collect_files(self) -> list[Metric]:
        """What the workers and the pool counted (summed over their files)."""
        with self._folding:
            return list(self._files.collect())  # type: ignore[no-untyped-call]

    def worker_gone(self, pid: int | None) -> None:
        if pid is None:
            return
        with self._folding:
            try:
                mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
                fold_into_archive(self.directory, pid)
            except Exception:
                # Its files stay, and still count: only the number of files grows.
                self.logger.exception("Metrics: could not fold the counts of worker pid %d", pid)

    def config_loaded(self, loaded: bool, refused: bool) -> None:
        if loaded:
            self.reloads += 1
        elif refused:
            self.refusals += 1

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._store is not None:
            self._store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Collector:
    """Every series of a scrape (prometheus_client's custom collector protocol)."""

    def __init__(
        self,
        exporter: Exporter,
        workers: WorkerSet,
        config: Configuration,
        link: StoreLink,
        store: StoreReader,
    ) -> None:
        self.exporter = exporter
        self.workers = workers
        self.config = config
        self.link = link
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield from self.exporter.collect_files()
        yield from self._pool()
        try:
            snapshot = self.store.read()
        except Exception:
            # The counters must still be served: the store's figures are left out.
            self.exporter.logger.exception("Metrics: could not read the store")
            snapshot = None
        if snapshot is not None:
            yield from store_series(snapshot)

    def _pool(self) -> Iterable[Metric]:
        pool = self.exporter.pool_name
        settings = self.config.settings
        planned = Staffing(settings.lanes, self.config.wanted).planned
        # A copy first: the pool's loop changes the set while a scrape reads it.
        records = list(self.workers.records.values())
        running = Counter(record.lane for record in records if not record.stopping)
        running_family = GaugeMetricFamily(
            "tuitop_workers_running",
            "Worker processes of this pool running (not stopping), per lane",
            labels=["pool", "lane"],
        )
        wanted_family = GaugeMetricFamily(
            "tuitop_workers_wanted",
            "Worker processes this pool wants, per lane",
            labels=["pool", "lane"],
        )
        for lane in dict.fromkeys((*settings.lanes.names, *running)):
            running_family.add_metric([pool, lane], running.get(lane, 0))
            wanted_family.add_metric([pool, lane], planned.get(lane, 0))
        yield running_family
        yield wanted_family
        yield _single(
            CounterMetricFamily,
            "tuitop_config_reloads",
            "Loads of the config files taken (a save, SIGHUP)",
            pool,
            self.exporter.reloads,
        )
        yield _single(
            CounterMetricFamily,
            "tuitop_config_refused",
            "Loads of the config files refused (the last good configuration stayed)",
            pool,
            self.exporter.refusals,
        )
        yield _single(
            GaugeMetricFamily,
            "tuitop_config_error",
            "1 while the last save of the config files is refused",
            pool,
            1 if self.config.error else 0,
        )
        yield _single(
            GaugeMetricFamily,
            "tuitop_store_up",
            "1 while the queue's store (Redis, the database) answers this pool",
            pool,
            1 if self.link.ok else 0,
        )


def _single(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    pool: str,
    value: float,
) -> Metric:
    metric = family(name, documentation, labels=["pool"])
    metric.add_metric([pool], value)
    return metric


def where(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def cannot_serve(address: str, port: int, error: OSError) -> MetricsError:
    """The error to say, from the system's (``Address already in use`` …)."""
    why = error.strerror or str(error)
    return MetricsError(f"cannot serve /metrics on {where(address, port)}: {why}")


def check_available(address: str, port: int) -> None:
    """Raises MetricsError when ``address:port`` cannot be listened on now (the UI asks
    before it starts its pool, whose error would only show in the log panel)."""
    try:
        family, kind, _, _, place = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind) as probe:
            # As the server will: a port left in TIME_WAIT is free, a listening one is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(place)
    except OSError as error:
        raise cannot_serve(address, port, error) from None


def sweep_directories() -> None:
    """Removes the directories of this user's pools that are gone (killed before they
    could remove their own): named after the pool's pid."""
    pattern = os.path.join(tempfile.gettempdir(), f"{DIRECTORY_PREFIX}*-*")
    for path in glob.glob(pattern):
        pid = os.path.basename(path)[len(DIRECTORY_PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if (
                pid.isdigit()
                and os.stat(path).st_uid == os.getuid()
                and not process_running(int(pid))
            ):
                shutil.rmtree(path, ignore_errors=True)
