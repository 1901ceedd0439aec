"""The staging path of a real runner, here: the built wheel carries everything a job reads, and `vlmloom curate`
on Beam's PortableRunner against an EXTERNAL worker pool that runs from a virtualenv holding only that wheel
writes the same bytes as the DirectRunner.

Dataflow, Flink and Spark workers get vlmloom only as the wheel (`--extra_package`) or an image built from it
(README "Running on a cluster"); their job servers cannot be downloaded here, but the worker side is the same
Beam SDK harness these tests start.
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv, runs curate twice (~2 min on a loaded 2-core machine)

REPO = Path(__file__).resolve().parents[1]

# Loaded through a .pth line by every interpreter of the wheel-only venv (the pool and the SDK workers it
# starts): logs each file a process opens whose path names vlmloom or lies in the source tree, module sources
# included (the import system reads them through io.open_code, which raises the same "open" audit event).
OPEN_PROBE = '''
import os, sys

_LOG = os.environ.get("VLMLOOM_OPEN_LOG")
_SOURCE = os.environ.get("VLMLOOM_SOURCE_TREE", "\\0")
_busy = []


def _hook(event, args):
    if event != "open" or _busy or not isinstance(args[0], str):
        return
    path = args[0]
    if "vlmloom" in path or path.startswith(_SOURCE):
        _busy.append(1)  # our own write below raises "open" too
        try:
            with open(_LOG, "a", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()}\\t{os.path.abspath(path)}\\n")
        finally:
            _busy.pop()


if _LOG:
    sys.addaudithook(_hook)
'''


def _source_files(root: Path) -> list[str]:
    """What a clean clone holds (tracked and untracked-but-not-ignored files); a plain walk without git."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return [f for f in listed if f and (root / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", "demo_out"}
        return [str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(root).parts)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """`python -m build` of a copy of the source tree (a build in place would leave build/ behind, and a stale
    build/lib can slip removed files into the wheel). It builds the sdist, then the wheel from the sdist, so a file
    the sdist drops (what `--setup_file` stages) is missing from the wheel too. Returns (wheel, tree, build log)."""
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "src"
    for name in _source_files(REPO):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    # --skip-dependency-check: build with this environment's setuptools, whatever version a dev venv holds
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check",
                           "--outdir", str(root / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = glob.glob(str(root / "dist" / "vlmloom-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], tree, done.stdout + done.stderr


def test_wheel_carries_every_package_file_and_nothing_else(wheel):
    path, tree, build_log = wheel
    names = set(zipfile.ZipFile(path).namelist())
    package_dir = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    needed = set()
    for package, folder in package_dir.items():  # every file of a library folder: code, configs, concept lists
        for file in (tree / folder).rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                needed.add("/".join([*package.split("."), *file.relative_to(tree / folder).parts]))
    assert {"vlmloom/curation/data/concepts_default.txt", "vlmloom/demo/configs/demo_curate.yaml",
            "vlmloom/trainer/rewards/rewards.yaml"} <= needed
    assert sorted(needed - names) == []
    shipped = {n for n in names if ".dist-info/" not in n}
    assert sorted(shipped - needed) == []  # no tests/, bench/, Makefile or stray build output
    meta = {n.split("/", 1)[1]: n for n in names if ".dist-info/" in n}
    assert "[console_scripts]\nvlmloom = vlmloom.cli.main:main" in \
        zipfile.ZipFile(path).read(meta["entry_points.txt"]).decode()
    # setuptools warns (and may one day skip) a data folder that `packages` does not name
    assert "Package would be ignored" not in build_log and "SetuptoolsDeprecationWarning" not in build_log


def _site_dirs() -> list[str]:
    return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]


def _wheel_only_venv(root: Path, wheel_path: str) -> Path:
    """A venv whose only vlmloom is the wheel. Its dependencies come from this interpreter's site directories
    through a .pth of plain path lines, to keep the test minutes short: Python adds those directories to
    sys.path but runs no .pth inside them, so the editable-install finder of this checkout's venv never loads."""
    venv = root / "wv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_deps.pth").write_text("".join(f"{d}\n" for d in _site_dirs()))
    probe = ("import importlib.util, sys; print(importlib.util.find_spec('apache_beam') is not None, "
             "importlib.util.find_spec('vlmloom') is not None)")
    before = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                            cwd=root).stdout.split()
    assert before == ["True", "False"], "the dependency path must give Beam but no vlmloom before the wheel"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    wheel_path], check=True, timeout=300, capture_output=True)
    (purelib / "_vlmloom_open_probe.py").write_text(OPEN_PROBE)
    (purelib / "_vlmloom_open_probe.pth").write_text("import _vlmloom_open_probe\n")
    where = subprocess.run([str(python), "-c", "import importlib.resources, vlmloom.pipelines.curate as c, "
                            "vlmloom.curation.concepts as k; print(c.__file__); print(k.DEFAULT_VOCABULARY); "
                            "print(importlib.resources.files('vlmloom.trainer.rewards') / 'rewards.yaml')"],
                           capture_output=True, text=True, check=True, cwd=root).stdout.splitlines()
    assert len(where) == 3 and all(Path(p).is_file() and Path(p).is_relative_to(purelib) for p in where), (where, purelib)
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, pool: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        assert pool.poll() is None, f"worker pool exited: {log.read_text()[-3000:]}"
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"worker pool did not listen on {port}: {log.read_text()[-3000:]}")


def _curate(corpus_dir: str, out: str, beam_args: list[str]) -> None:
    from vlmloom.cli.main import main

    # concepts on: its worker reads the shipped concept list, a data file that must come from the wheel
    assert main(["curate", *sorted(glob.glob(os.path.join(corpus_dir, "tars", "*.tar"))),
                 os.path.join(corpus_dir, "manifest.parquet"), "--output", out,
                 "--config", str(REPO / "demo" / "configs" / "demo_curate.yaml"),
                 "--set", "output_format.samples_per_shard=12", "--set", "models.concepts.enabled=true",
                 *beam_args]) == 0


def _outputs(out: str) -> dict[str, bytes | dict]:
    """Every file of a curated directory; report.json without the two fields a run may differ in, and
    report.html (a rendering of report.json, which shows the run's seconds) only as present."""
    files: dict[str, bytes | dict] = {}
    for path in sorted(Path(out).rglob("*")):
        if path.is_file():
            files[str(path.relative_to(out))] = path.read_bytes()
    report = json.loads(files.pop("report.json"))
    report.pop("seconds")
    report["config"].pop("output")
    files["report.json"] = report
    files["report.html"] = b"present" if files.get("report.html") else b""
    return files


def test_external_worker_pool_from_the_wheel_writes_what_the_direct_runner_writes(wheel, tmp_path):
    venv = _wheel_only_venv(tmp_path, wheel[0])
    corpus_dir = str(tmp_path / "corpus")
    build_demo_corpus(corpus_dir, DemoCorpusConfig(num_samples=50, samples_per_tar=20))
    opens = tmp_path / "opens.log"
    pool_log = tmp_path / "pool.log"
    port = _free_port()
    # The pool starts each SDK worker as `python -c ...` found on PATH, so PATH must lead to the wheel venv.
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "VLMLOOM_OPEN_LOG": str(opens), "VLMLOOM_SOURCE_TREE": str(REPO)}
    env.pop("PYTHONPATH", None)
    with open(pool_log, "wb") as log:
        pool = subprocess.Popen([str(venv / "bin" / "python"), "-m", "apache_beam.runners.worker.worker_pool_main",
                                 f"--service_port={port}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path, start_new_session=True)  # its own group: the finally ends its workers
    try:
        _wait_for_port(port, pool, pool_log)
        _curate(corpus_dir, str(tmp_path / "external"), ["--runner=PortableRunner", "--job_endpoint=embed",
                                                         "--environment_type=EXTERNAL",
                                                         f"--environment_config=localhost:{port}"])
    finally:
        os.killpg(pool.pid, signal.SIGTERM)
        try:
            pool.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
    _curate(corpus_dir, str(tmp_path / "direct"), ["--direct_num_workers=1"])

    external, direct = _outputs(str(tmp_path / "external")), _outputs(str(tmp_path / "direct"))
    assert sorted(external) == sorted(direct)
    assert len([n for n in direct if n.startswith("shards/")]) >= 2
    for name in direct:
        assert external[name] == direct[name], name

    # The SDK workers (not the pool, not this driver) ran vlmloom's stages and read its concept list from the
    # wheel, and nothing from the source tree.
    assert "Starting worker with command ['python'" in pool_log.read_text()
    rows = [line.split("\t", 1) for line in opens.read_text().splitlines()] if opens.exists() else []
    site = venv.resolve()
    worker_rows = [Path(path).resolve() for pid, path in rows if int(pid) not in (pool.pid, os.getpid())]
    source_folders = [REPO / folder for folder in tomllib.loads((REPO / "pyproject.toml").read_text())
                      ["tool"]["setuptools"]["package-dir"].values()]
    assert [p for p in worker_rows if any(p.is_relative_to(f) for f in source_folders)] == []
    assert [p for p in worker_rows if p.name.startswith("__editable__")] == []  # no editable-install finder
    package_files = [p for p in worker_rows if "vlmloom" in p.parts]  # the package's modules and data
    assert package_files and [p for p in package_files if not p.is_relative_to(site)] == []
    read = {p.relative_to(site).as_posix().split("site-packages/", 1)[-1] for p in package_files}
    assert "vlmloom/curation/data/concepts_default.txt" in read
    assert any(r.startswith("vlmloom/pipelines/") for r in read) and any(r.startswith("vlmloom/curation/") for r in read)
