"""Rendering off the event loop: a worker pool in front of :func:`viewer.render.render`.

Every rendered image the HTTP side serves (DICOMweb ``rendered`` and ``thumbnail``,
WADO-URI ``image/*``) goes through one :class:`RenderPool` per application:

- **cache first**: the encoded bytes are kept in a :class:`viewer.cache.RenderCache`
  under a key naming everything they depend on (:attr:`RenderJob.key`), so a slice
  seen before costs a dictionary look-up;
- **one render per key**: requests for an image already being rendered wait for
  that render instead of starting another (a viewer often asks for the same slice
  twice: prefetch, then display);
- **a pool sized to the cores** (``PACS_RENDER_WORKERS``, default one per core):
  the event loop only awaits, so a slow render (a 1024x1024 cine GIF, a JPEG 2000
  frame) never holds up ``/healthz``, a query or a cached image, and a burst of
  renders queues instead of oversubscribing the CPU.

Threads are the default (``PACS_RENDER_POOL=thread``). Measured with bench/render.py
on the 2-core machine this was built on (three runs): the pipeline alone renders
465-530 images/s one at a time, 0.7-1.1x that with 2 threads (it holds the GIL for
much of its time: pydicom's parse, numpy on small arrays) and 1.2-1.5x with 2
processes. Over HTTP the difference mostly vanishes, because the server's own
Python (HTTP, auth, audit) shares the GIL anyway: single-client uncached p50 was
6.2-7.6 ms with threads and 6.6-8.6 ms with processes; with 8 clients, processes
gave 1.0-1.4x the uncached requests/s but only ~0.65x the cached requests/s (cache
hits, the common case once a study is open). A process pool
(``PACS_RENDER_POOL=process``) also isolates the decoders (a crash in a C plugin
costs one worker, which is replaced, not the server) and should pay off with more
cores.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import os
import select
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from prometheus_client import Counter, Histogram

from viewer import render as rendering
from viewer.cache import RenderCache
from viewer.render import PIPELINE_VERSION, RenderParams

log = logging.getLogger(__name__)

PoolKind = Literal["thread", "process"]

# Bump when what this side asks of the pipeline changes the bytes; the pipeline's own
# PIPELINE_VERSION is part of every cache key and ETag too, so browsers and the cache
# drop old images when either changes.
RENDERER_VERSION = "1"

RENDER_SECONDS = Histogram(
    "pacs_render_seconds",
    "Time to render one image (decode, LUTs, resize, encode), in a worker",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
RENDERS = Counter("pacs_renders_total", "Rendered images asked for", ["outcome"])


class RendererCrashed(RuntimeError):
    """A process-pool worker died while rendering (a decoder crashed)."""


@dataclass(frozen=True)
class RenderJob:
    """One image to render: which file, and how."""

    source: Path
    sha256: str  # of the stored file: the same hash is the same pixels
    params: RenderParams

    @property
    def representation(self) -> str:
        """Everything but the file that the bytes depend on, written out canonically
        (stable across processes and restarts, unlike ``hash()`` of a frozenset)."""
        p = self.params
        window = None if p.window is None else (p.window.center, p.window.width, p.window.function)
        return "|".join(
            map(
                str,
                (
                    f"render-v{RENDERER_VERSION}.{PIPELINE_VERSION}",
                    p.media_type,
                    p.frame,
                    "all" if p.all_frames else "one",
                    window,
                    p.preset,
                    p.viewport,
                    p.region,
                    p.source_rect,
                    p.quality,
                    ",".join(sorted(p.annotation)),
                ),
            )
        )

    @property
    def key(self) -> str:
        return f"{self.sha256}|{self.representation}"


def render_job(job: RenderJob) -> tuple[bytes, float]:
    """Render in a worker (thread or process): the image and the seconds it took."""
    started = time.perf_counter()
    image = rendering.render(job.source, job.params)
    return image.body, time.perf_counter() - started


def _worker_start(server_pid: int) -> None:
    """Process workers: import the pipeline before the first request needs it, and
    exit when the server is gone. uvicorn ends on SIGTERM by re-raising the signal,
    so no exit handler of the server runs, and a worker blocked on its queue (whose
    both ends it holds) would otherwise wait forever."""
    import viewer.render  # noqa: F401

    threading.Thread(
        target=_exit_with, args=(server_pid,), name="render-watch", daemon=True
    ).start()


def _exit_with(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): look every second
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                continue
    select.select([fd], [], [])  # readable once the process has exited
    os._exit(0)


class RenderPool:
    """The cache, the in-flight renders and the workers of one application."""

    def __init__(
        self, workers: int = 0, cache_bytes: int = 256 * 1024**2, kind: PoolKind = "thread"
    ):
        self.workers = workers or os.cpu_count() or 1
        self.kind: PoolKind = kind
        self.cache = RenderCache(cache_bytes)
        self._lock = threading.RLock()
        self._inflight: dict[str, Future[tuple[bytes, float]]] = {}
        self._executor = self._new_executor()
        if kind == "process":
            atexit.register(self.close)

    def _new_executor(self) -> Executor:
        if self.kind == "process":
            # forkserver: never fork a process that already runs threads (audit writer,
            # database pools, the event loop).
            return ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )
        return ThreadPoolExecutor(self.workers, thread_name_prefix="render")

    def cached(self, job: RenderJob) -> bytes | None:
        return self.cache.get(job.key)

    async def render(self, job: RenderJob) -> bytes:
        """The image of ``job``: from the cache, from a render already running, or
        rendered now in the pool. Raises what the pipeline raises."""
        key = job.key
        body = self.cache.get(key)
        if body is not None:
            RENDERS.labels("cached").inc()
            return body
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                body = self.cache.get(key)  # finished between the look-up and the lock
                if body is not None:
                    return body
                future = self._submit(job)
                self._inflight[key] = future
                future.add_done_callback(partial(self._finished, key))
            else:
                RENDERS.labels("joined").inc()
        try:
            # shield: a client that goes away must not cancel a render others wait for
            result, _ = await asyncio.shield(asyncio.wrap_future(future))
        except BrokenProcessPool as exc:
            self._replace_broken_executor()
            raise RendererCrashed("the renderer crashed on this image") from exc
        return result

    def _submit(self, job: RenderJob) -> Future[tuple[bytes, float]]:
        try:
            return self._executor.submit(render_job, job)
        except BrokenProcessPool:
            self._replace_broken_executor()
            return self._executor.submit(render_job, job)

    def _finished(self, key: str, future: Future[tuple[bytes, float]]) -> None:
        """Runs in the worker that finished (or in the submitting thread)."""
        with self._lock:
            if not future.cancelled() and future.exception() is None:
                body, seconds = future.result()
                self.cache.put(key, body)
                RENDER_SECONDS.observe(seconds)
                RENDERS.labels("rendered").inc()
            else:
                RENDERS.labels("failed").inc()
            self._inflight.pop(key, None)

    def _replace_broken_executor(self) -> None:
        with self._lock:
            broken = self._executor
            if isinstance(broken, ProcessPoolExecutor) and getattr(broken, "_broken", False):
                log.error("a render worker died; starting a new pool")
                self._executor = self._new_executor()
                broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers (process workers would otherwise outlive the server)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


_create_lock = threading.Lock()


def pool_for(state: object) -> RenderPool:
    """The application's pool (``app.state.render_pool``), made on first use from its
    settings (``render_workers``, ``render_cache_bytes``, ``render_pool``)."""
    pool: RenderPool | None = getattr(state, "render_pool", None)
    if pool is not None:
        return pool
    with _create_lock:
        pool = getattr(state, "render_pool", None)
        if pool is None:
            settings = getattr(state, "settings", None)
            pool = RenderPool(
                getattr(settings, "render_workers", 0),
                getattr(settings, "render_cache_bytes", 256 * 1024**2),
                getattr(settings, "render_pool", "thread"),
            )
            state.render_pool = pool  # type: ignore[attr-defined]
    return pool
