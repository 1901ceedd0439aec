"""Loaded by every Python process that bench/beam_timeline.py starts (PYTHONPATH): records, per process, when
Beam's runner ran each fused stage and when each worker ran each bundle (wall and CPU), plus GC time, into
$BEAMTIMELINE_DIR/<pid>.json at exit. A diagnostic: it wraps three Beam internals of the FnApiRunner
(2.77) once they are imported and changes nothing else."""
import atexit
import builtins
import gc
import json
import os
import sys
import time

_DIR = os.environ.get("BEAMTIMELINE_DIR")
_T0 = time.time()
_events: list = []
_gc = {"seconds": 0.0, "collections": [0, 0, 0], "since": 0.0}
_wrapped: set = set()


def _on_gc(phase, info):
    if phase == "start":
        _gc["since"] = time.perf_counter()
    else:
        _gc["seconds"] += time.perf_counter() - _gc["since"]
        _gc["collections"][info["generation"]] += 1


def _dump():
    with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as fh:
        json.dump({"pid": os.getpid(), "t0": _T0, "t_exit": time.time(), "cpu": time.process_time(),
                   "gc": _gc, "events": _events}, fh)


def _wrap(owner, name, kind, describe):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        wall, cpu = time.time(), (time.thread_time() if kind == "bundle" else time.process_time())
        try:
            return original(*args, **kwargs)
        finally:
            spent = (time.thread_time() if kind == "bundle" else time.process_time()) - cpu
            _events.append([kind, wall, time.time(), spent, describe(*args)])

    setattr(owner, name, timed)


def _patch():
    bp = sys.modules.get("apache_beam.runners.worker.bundle_processor")
    if bp is not None and hasattr(bp, "BundleProcessor") and "bundle" not in _wrapped:
        _wrapped.add("bundle")
        _wrap(bp.BundleProcessor, "process_bundle", "bundle",
              lambda self, *a: sorted(t.unique_name for t in self.process_bundle_descriptor.transforms.values()))
    fr = sys.modules.get("apache_beam.runners.portability.fn_api_runner.fn_runner")
    wh = sys.modules.get("apache_beam.runners.portability.fn_api_runner.worker_handlers")
    if fr is not None and wh is not None and hasattr(fr, "FnApiRunner") and "stage" not in _wrapped:
        _wrapped.add("stage")
        _wrap(fr.FnApiRunner, "_execute_bundle", "stage", lambda self, ctx, manager, *a: [manager.stage.name])
        _wrap(fr.FnApiRunner, "run_stages", "call", lambda *a: ["run_stages"])
        _wrap(wh.WorkerHandlerManager, "close_all", "call", lambda *a: ["close_all (workers shut down)"])


if _DIR:
    gc.callbacks.append(_on_gc)
    atexit.register(_dump)
    _import = builtins.__import__

    def _importing(name, *args, **kwargs):
        module = _import(name, *args, **kwargs)
        if len(_wrapped) < 2 and name.startswith("apache_beam"):
            _patch()
        return module

    builtins.__import__ = _importing
