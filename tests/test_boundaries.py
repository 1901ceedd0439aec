"""Import boundaries between the library folders, checked on the source (no imports executed).

- no library folder imports the generated-data package `vlmloom.demo`;
- only pipelines/ imports apache_beam, only trainer/ imports deepspeed;
- packing/ does not import curation/ (shared pieces live in schemas/);
- one reader per on-disk format: only schemas/tars.py imports tarfile; the curated layout's names (formats.py) are
  used only by schemas/curated.py and the packed layout's only by schemas/packed.py, so every other module reads
  and writes those directories through them.
"""
import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ("schemas", "curation", "pipelines", "packing", "trainer")


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute module names a file of `package` imports, anywhere in it (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute_module(node, package)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def absolute_module(node: ast.ImportFrom, package: str) -> str:
    """The module an ImportFrom names, relative ones resolved against `package` (`..` is its parent)."""
    if not node.level:
        return node.module or ""
    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{parent}.{node.module}" if node.module else parent


def files(folder: str) -> list[pathlib.Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offenders(folders, banned: str) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {m}" for folder in folders for p in files(folder)
            for m in sorted(imported_modules(p.read_text(encoding="utf-8"), f"vlmloom.{folder}")) if m == banned or m.startswith(banned + ".")]


def test_every_library_folder_has_python_files():
    assert all(files(folder) for folder in LIBRARY)


@pytest.mark.parametrize("folder", LIBRARY)
def test_library_does_not_import_generated_data(folder):
    assert offenders([folder], "vlmloom.demo") == []


def test_only_pipelines_imports_beam():
    assert offenders([f for f in LIBRARY if f != "pipelines"], "apache_beam") == []


def test_only_trainer_imports_deepspeed():
    assert offenders([f for f in LIBRARY + ("demo", "cli") if f != "trainer"], "deepspeed") == []


def test_packing_does_not_import_curation():
    assert offenders(["packing"], "vlmloom.curation") == []


def test_checker_sees_imports():
    # the scan must catch a function-level import and a relative one, or the tests above prove nothing
    source = "def f():\n    from vlmloom.demo.corpus import build_demo_corpus\nfrom .x import y\nimport apache_beam as beam\n"
    assert {"vlmloom.demo.corpus", "vlmloom.packing.x", "apache_beam"} <= imported_modules(source, "vlmloom.packing")


def test_demo_configs_ship_as_package_data():
    from vlmloom.demo.run import config_path

    for name in ("demo_curate.yaml", "demo_train_pretrain.yaml", "demo_train_sft.yaml"):
        assert pathlib.Path(config_path(name)).is_file(), name


# Every folder that ships or runs code (tests/ check the formats themselves and may name their files).
CODE = LIBRARY + ("demo", "cli", "bench")
TARFILE_EXEMPT = {
    "schemas/tars.py": "the one tar reader and writer",
    "demo/hostile.py": "writes deliberately malformed tars (links, devices, odd headers) the one writer refuses",
    "bench/curate_scale.py": "a benchmark's own corpus writer, not part of the package",
}
# Layout names → the one module allowed to use them (formats.py, where they are defined, aside).
LAYOUT_OWNERS = {
    ("vlmloom.schemas.formats", name): owners for names, owners in [
        (("MANIFEST_DIR", "REJECTED_DIR", "REPORT_FILE", "REPORT_HTML_FILE", "REPORT_STATS_DIR",
          "curated_shard_name", "part_name", "report_stats_name"), {"schemas/curated.py"}),
        (("MANIFEST_FILE", "shard_name"), {"schemas/packed.py"}),
        (("SHARDS_DIR", "SUCCESS_FILE"), {"schemas/curated.py", "schemas/packed.py"}),
    ] for name in names
} | {("vlmloom.schemas.packed", name): {"schemas/packed.py"}
     for name in ("REJECTED_FILE", "REPORT_FILE", "REPORT_HTML_FILE")}
# File names of our outputs that no module outside schemas/ spells out (a path built by hand bypasses the layout).
LAYOUT_FILE_NAMES = ("report.json", "report.html", "pack_report.json", "pack_report.html", "rejected.parquet",
                     "_SUCCESS", ".report_stats")


def names_used(source: str, package: str) -> set[tuple[str, str]]:
    """(module, name) of every name this file takes from a module: `from M import N`, and `A.N` where A is M
    imported (`import M as A`, `from P import m as A`)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = absolute_module(node, package)
            for alias in node.names:
                used.add((base, alias.name))
                aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.add((aliases[node.value.id], node.attr))
    return used


def layout_names_spelled(source: str) -> set[str]:
    """Our output file names written out as string constants (whole, or as a path's last part)."""
    return {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) for name in LAYOUT_FILE_NAMES
            if node.value == name or node.value.endswith("/" + name)}


@functools.lru_cache(maxsize=1)
def code_files() -> tuple[tuple[str, str, str], ...]:
    """(path relative to the repository, source, package) of every file of CODE, read once for all tests."""
    return tuple((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"), f"vlmloom.{folder}")
                 for folder in CODE for path in files(folder))


def test_only_schemas_tars_imports_tarfile():
    found = [f"{rel} imports tarfile" for rel, source, package in code_files() if rel not in TARFILE_EXEMPT
             for m in imported_modules(source, package) if m == "tarfile" or m.startswith("tarfile.")]
    assert found == [], "parse tars through schemas/tars.py (iter_tar_groups, iter_tar_members, scan_tar_headers)"


def test_layouts_are_named_only_by_their_schemas_modules():
    found = [f"{rel} uses {module.rsplit('.', 1)[1]}.{name}" for rel, source, package in code_files()
             for module, name in sorted(names_used(source, package))
             if (module, name) in LAYOUT_OWNERS and rel not in LAYOUT_OWNERS[(module, name)]]
    assert found == [], "read and write curated/packed directories through schemas/curated.py and schemas/packed.py"
    spelled = [f"{rel} spells out {sorted(names)}" for rel, source, _ in code_files()
               if not rel.startswith("schemas/") for names in [layout_names_spelled(source)] if names]
    assert spelled == [], "build output paths with schemas/curated.py and schemas/packed.py"


def test_layout_checkers_see_every_spelling():
    # each way a module can reach a layout name, or the tests above prove nothing
    source = ("from vlmloom.schemas import formats, packed as layout\nimport vlmloom.schemas.formats as f\n"
              "from vlmloom.schemas.formats import part_name\nfrom ..schemas.formats import SHARDS_DIR\n"
              "def g():\n    return formats.MANIFEST_DIR, layout.REPORT_FILE, f.shard_name, f'{d}/report.json'\n")
    used = names_used(source, "vlmloom.pipelines")
    assert {("vlmloom.schemas.formats", "MANIFEST_DIR"), ("vlmloom.schemas.packed", "REPORT_FILE"),
            ("vlmloom.schemas.formats", "shard_name"), ("vlmloom.schemas.formats", "part_name"),
            ("vlmloom.schemas.formats", "SHARDS_DIR")} <= used
    assert layout_names_spelled(source) == {"/report.json"}
    assert imported_modules("def f():\n    import tarfile\n", "vlmloom.pipelines") == {"tarfile"}
    assert all((ROOT / rel).is_file() for rel in TARFILE_EXEMPT)
