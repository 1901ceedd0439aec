"""Import boundaries between the library folders, checked on the source (no imports executed).

- no library folder imports the generated-data package `vlmloom.demo`;
- only pipelines/ imports apache_beam, only trainer/ imports deepspeed;
- packing/ does not import curation/ (shared pieces live in schemas/).
"""
import ast
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
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


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
