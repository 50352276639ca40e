"""Executors for the per-image stages: in-process, a local process pool, or Dask.

Every executor is a context manager that starts its workers on entry and stops them on
exit. Its :meth:`Executor.map` applies a picklable function to a list of items and
returns the results in the order of the items. The
runner creates one executor per run and calls ``map`` once per batch, so worker start-up
is paid once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ExecutorKind = Literal["local", "dask"]

DASK_INSTALL_HINT = "pip install 'medground[dask]'"


class ExecutorError(Exception):
    """An executor that cannot start, with what to do about it."""


class Executor(Protocol):
    """Runs one function over many items and returns the results in item order."""

    def __enter__(self) -> Executor: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Apply ``fn`` to every item; return the results in the order of ``items``."""
        ...


def default_workers() -> int:
    """Return the number of worker processes used when none is given: all cores."""
    return os.cpu_count() or 1


class InlineExecutor:
    """Runs every call in the calling process; the executor for ``--workers 1``."""

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Apply ``fn`` to every item in turn."""
        return [fn(item) for item in items]


def _pool_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    # Not 'fork': the parent holds polars' thread pool and a SQLite connection, and a
    # forked child can inherit a lock that one of those threads held at fork time.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The fork server imports these once, and every worker forked from it starts with
    # them loaded instead of importing SciPy and scikit-image itself.
    context.set_forkserver_preload(list(preload))
    return context


_PARENT_POLL_SECONDS = 1.0


def _exit_with_parent(parent_pid: int) -> None:
    """Start a thread in a pool worker that ends the worker once ``parent_pid`` is gone.

    A pool worker waits on a queue whose write end it holds itself, so it never sees
    end-of-file when the main process is killed (SIGKILL, out-of-memory killer) and would
    otherwise keep running.
    """

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                # The process exists but belongs to someone else: the pid was reused.
                os._exit(1)

    threading.Thread(target=watch, name="mgr-parent-watch", daemon=True).start()


class ProcessExecutor:
    """Runs calls in a pool of ``workers`` processes on this machine.

    The pool uses the 'forkserver' start method where the platform has it, else 'spawn'.
    Functions and items must be picklable, and the function importable by the workers.

    Args:
        workers: number of worker processes.
        preload: modules the fork server imports before it forks the workers.
    """

    def __init__(
        self,
        workers: int,
        preload: Sequence[str] = ("medground.executors", "medground.extract"),
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.preload = tuple(preload)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProcessExecutor:
        context = _pool_context(self.preload)
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        logger.debug(
            "started a process pool of %d workers (%s)", self.workers, context.get_start_method()
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if self._pool is not None:
            # On an error, queued calls are dropped rather than run to completion.
            self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
            self._pool = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Apply ``fn`` to every item in the pool, a few items per task."""
        if self._pool is None:
            raise RuntimeError("ProcessExecutor.map called outside its 'with' block")
        # Several items per task amortise the pickling of ``fn``, and four tasks per
        # worker keep the workers evenly loaded when images differ in cost.
        chunksize = max(1, len(items) // (4 * self.workers))
        return list(self._pool.map(fn, items, chunksize=chunksize))


def _import_distributed() -> Any:
    try:
        import dask.distributed as distributed
    except ImportError as exc:
        raise ExecutorError(
            "the Dask executor needs the optional 'dask' extra, which is not installed; "
            f"install it with: {DASK_INSTALL_HINT}"
        ) from exc
    return distributed


class DaskExecutor:
    """Runs calls on a ``dask.distributed`` cluster.

    With ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``) the executor attaches
    to a running cluster and leaves it running on exit. Without it, the executor starts a
    ``LocalCluster`` of ``workers`` single-threaded worker processes that listens on
    127.0.0.1 only and has no dashboard, and stops it on exit.

    Raises:
        ExecutorError: on entry, when Dask is not installed or the scheduler does not
            answer.
    """

    def __init__(self, workers: int, scheduler: str | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.scheduler = scheduler
        self._cluster: Any = None
        self._client: Any = None

    def __enter__(self) -> DaskExecutor:
        distributed = _import_distributed()
        try:
            if self.scheduler is None:
                self._cluster = distributed.LocalCluster(
                    host="127.0.0.1",
                    # None still binds the scheduler's HTTP endpoint to port 8787 (distributed
                    # 2026.8); a free loopback port avoids clashing with another cluster.
                    dashboard_address="127.0.0.1:0",
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                )
                self._client = distributed.Client(self._cluster)
                logger.debug("started a local Dask cluster of %d workers", self.workers)
            else:
                self._client = distributed.Client(self.scheduler)
                logger.info("attached to the Dask scheduler at %s", self.scheduler)
        except (OSError, TimeoutError) as exc:
            self.__exit__(type(exc), exc, None)
            where = self.scheduler or "a local cluster on 127.0.0.1"
            raise ExecutorError(f"cannot start the Dask executor on {where}: {exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Submit one task per item and gather the results in item order."""
        if self._client is None:
            raise RuntimeError("DaskExecutor.map called outside its 'with' block")
        # pure=False: each call is a new task, even for an item equal to an earlier one,
        # so Dask never returns a result cached from a previous batch or run.
        futures = self._client.map(fn, list(items), pure=False)
        return list(self._client.gather(futures))


def make_executor(kind: ExecutorKind, workers: int, scheduler: str | None = None) -> Executor:
    """Build the executor that ``mgr run --executor KIND --workers N`` asks for.

    Raises:
        ExecutorError: for a scheduler address given to the local executor.
    """
    if kind == "dask":
        return DaskExecutor(workers, scheduler)
    if scheduler is not None:
        raise ExecutorError(
            f"--scheduler {scheduler} needs --executor dask; the local executor has no scheduler"
        )
    if workers == 1:
        return InlineExecutor()
    return ProcessExecutor(workers)
