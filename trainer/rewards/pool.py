"""A pool of worker processes that can be killed: each task has a deadline, and a worker past it is SIGKILLed.

Why not `concurrent.futures.ProcessPoolExecutor`: it cannot kill one stuck task (math-verify's `parse` can hang
on `2^2^2^2^2^2^2`, and its own timeout uses `signal.alarm`, main thread only). Here every task runs on its own
worker with a deadline; the parent waits on the pipes with `multiprocessing.connection.wait`, kills a worker
whose task is late, answers that task with `timeout`, and starts a fresh worker for the rest.

Workers come from the `forkserver` context (preloading this package and math-verify), so they start in
milliseconds, never inherit the trainer's threads or CUDA state, and a killed one is cheap to replace.

    run(tasks) -> outcomes      task = (key, payload, timeout_s); outcome = (key, kind, value, elapsed_s)
    kind: "ok" (value = the function's return), "error" (value = traceback text), "timeout", "crash"
"""
from __future__ import annotations

import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable

_PRELOAD = ["vlmloom.trainer.rewards"]


def _worker_main(conn: Connection, setup: Callable[[Any], Callable[[Any], Any]], setup_arg: Any) -> None:
    handler = setup(setup_arg)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        key, payload = message
        try:
            conn.send((key, "ok", handler(payload)))
        except Exception:  # a verifier bug: reported to the parent, which counts it (never silently 0)
            conn.send((key, "error", traceback.format_exc(limit=8)))


class _Worker:
    def __init__(self, ctx: Any, setup: Callable, setup_arg: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, setup, setup_arg), daemon=True)
        self.process.start()
        child.close()
        self.task: tuple[Any, float, float] | None = None  # (key, started, deadline)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class KillablePool:
    """`size` workers running `setup(setup_arg)(payload)` per task; late workers are killed and replaced."""

    def __init__(self, size: int, setup: Callable[[Any], Callable[[Any], Any]], setup_arg: Any,
                 preload: Iterable[str] = ()):
        if size < 1:
            raise ValueError("KillablePool needs size >= 1")
        self.size = size
        self._setup, self._setup_arg = setup, setup_arg
        self._ctx = multiprocessing.get_context("forkserver")
        # Preload applies to the forkserver started by this process (the first one wins; harmless later).
        self._ctx.set_forkserver_preload(list(dict.fromkeys([*_PRELOAD, *preload])))
        self._workers: list[_Worker] = []
        self.killed = 0  # workers killed on a deadline over the pool's life
        self.crashed = 0  # workers that died on their own

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._setup, self._setup_arg)

    def run(self, tasks: list[tuple[Any, Any, float]]) -> list[tuple[Any, str, Any, float]]:
        """Run every task; outcomes come back in completion order (callers key them)."""
        pending = list(reversed(tasks))
        outcomes: list[tuple[Any, str, Any, float]] = []
        while len(self._workers) < min(self.size, len(tasks)):
            self._workers.append(self._spawn())
        while pending or any(w.task for w in self._workers):
            for i, worker in enumerate(self._workers):
                if worker.task is None and pending:
                    key, payload, timeout_s = pending.pop()
                    if not worker.process.is_alive():
                        worker.kill()
                        self.crashed += 1
                        worker = self._workers[i] = self._spawn()
                    now = time.monotonic()
                    worker.task = (key, now, now + timeout_s)
                    try:
                        worker.conn.send((key, payload))
                    except (BrokenPipeError, OSError):
                        pass  # noticed below as a crash
            busy = [w for w in self._workers if w.task]
            next_deadline = min(w.task[2] for w in busy)
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                         timeout=max(0.0, next_deadline - time.monotonic()))
            now = time.monotonic()
            for i, worker in enumerate(self._workers):
                if worker.task is None:
                    continue
                key, started, deadline = worker.task
                if worker.conn in ready:
                    try:
                        got_key, kind, value = worker.conn.recv()
                    except (EOFError, OSError):
                        got_key, kind, value = key, "crash", f"worker exited with code {worker.process.exitcode}"
                    if kind == "crash":
                        worker.kill()
                        self.crashed += 1
                        self._workers[i] = self._spawn()
                    else:
                        worker.task = None
                    outcomes.append((got_key, kind, value, now - started))
                elif worker.process.sentinel in ready or not worker.process.is_alive():
                    worker.kill()
                    self.crashed += 1
                    self._workers[i] = self._spawn()
                    outcomes.append((key, "crash", f"worker exited with code {worker.process.exitcode}", now - started))
                elif now >= deadline:
                    worker.kill()
                    self.killed += 1
                    self._workers[i] = self._spawn()
                    outcomes.append((key, "timeout", None, now - started))
        return outcomes

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
