"""The package as a user installs it: one top-level name, no import cycles, layers kept apart, and
every docstring example in the package true (run here by its installed name)."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def all_modules() -> list[str]:
    # The packages pyproject.toml installs (some are mapped from top-level folders, which a plain
    # walk of coldstart.__path__ does not see in an editable install), and every module in them.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    names = set(packages)
    for package in packages:
        path = importlib.import_module(package).__path__
        names.update(m.name for m in pkgutil.iter_modules(path, package + ".") if not m.ispkg)
    return sorted(names)


def module_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).read_text()


def imports_of(name: str, modules: set[str]) -> set[str]:
    """Every coldstart module ``name`` imports, at module level or inside functions (a lazy import
    still ties the two modules together)."""
    out: set[str] = set()
    is_pkg = importlib.util.find_spec(name).submodule_search_locations is not None
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(module_source(name))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def test_the_wheel_installs_only_the_coldstart_namespace(tmp_path: Path) -> None:
    # Built from a copy of what pyproject.toml names, as from a fresh clone: setuptools' build/ folder in
    # the checkout could carry modules deleted since, and other test runs share it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in set(setuptools_cfg["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("coldstart-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"coldstart"}
    for part in ("streams", "model", "trainer", "bench", "evaluation", "replay"):
        assert f"coldstart/{part}/__init__.py" in names

    # Installed on its own (no editable finder, not run from the repository, whose folders would
    # import as `model` from the working directory), the stages import by their coldstart names only.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    # (bin/ holds the `coldstart` console script, not a package)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "coldstart"]
    deps = [p for p in sys.path if p.endswith("site-packages")]  # torch, faust, ... without their .pth hooks
    code = "\n".join([
        "import sys",
        f"sys.path[:] = [{str(target)!r}] + [p for p in sys.path if 'site-packages' not in p] + {deps!r}",
        "import coldstart.streams, coldstart.model, coldstart.trainer",
        "import coldstart.streams.processor, coldstart.model.profile, coldstart.trainer.buffer",
        f"assert coldstart.__file__.startswith({str(target)!r}), coldstart.__file__",
        "for name in ('model', 'streams', 'trainer', 'bench'):",
        "    try:",
        "        __import__(name)",
        "    except ModuleNotFoundError:",
        "        continue",
        "    raise SystemExit(f'import {name} worked: {sys.modules[name]!r}')",
        "print('ok')",
    ])
    # -I: no user site, no environment, no working directory on the path; -S: no site-packages hooks
    # (the environment's editable install of this repository is one).
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_no_import_cycles() -> None:
    modules = set(all_modules())
    graph = {m: imports_of(m, modules) for m in modules}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    assert cycles == []


def test_cycle_finder_sees_a_lazy_import() -> None:
    # The finder reads imports inside functions too: coldstart.cli imports the worker lazily.
    assert "coldstart.streams.app" in imports_of("coldstart.cli", set(all_modules()))


@pytest.mark.parametrize("layer, forbidden", [
    ("coldstart.model", ("faust", "aiokafka", "kafka", "coldstart.streams", "coldstart.trainer")),
    ("coldstart.trainer", ("faust", "coldstart.streams")),
    ("coldstart.contract", ("faust", "aiokafka", "kafka")),
])
def test_layers_do_not_import_what_they_must_not(layer: str, forbidden: tuple[str, ...]) -> None:
    modules = [m for m in all_modules() if m == layer or m.startswith(layer + ".")]
    assert modules
    for name in modules:
        for node in ast.walk(ast.parse(module_source(name))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            for t in targets:
                assert not any(t == f or t.startswith(f + ".") for f in forbidden), f"{name} imports {t}"


def test_topic_names_are_written_once_in_the_contract() -> None:
    from coldstart import contract

    names = {contract.SEARCH, contract.CLICK, contract.CATALOG, contract.DLQ, contract.AUDIT, contract.SAMPLES,
             contract.MODEL_VERSIONS}
    written = {m: sorted({n.value for n in ast.walk(ast.parse(module_source(m)))
                          if isinstance(n, ast.Constant) and n.value in names})
               for m in all_modules() if m != "coldstart.contract"}
    assert {m: n for m, n in written.items() if n} == {}


# Handing the environment on to a child process ({**os.environ, ...}) is not reading it; the fault tests'
# crash point (COLDSTART_CRASH_AT, coldstart.failpoints) is a test hook, not a setting.
READS_ENV = {"coldstart.settings", "coldstart.failpoints"}


def environment_reads(name: str) -> list[str]:
    """``os.environ[...]``, ``os.environ.get(...)``, ``... in os.environ`` and ``os.getenv(...)`` in ``name``."""
    def is_environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ"
                and isinstance(node.value, ast.Name) and node.value.id == "os")

    found = []
    for node in ast.walk(ast.parse(module_source(name))):
        if isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            found.append(f"line {node.lineno}: os.environ[...]")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if (f.attr == "get" and is_environ(f.value)) or \
                    (f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os"):
                found.append(f"line {node.lineno}: {ast.unparse(f)}(...)")
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            found.append(f"line {node.lineno}: ... in os.environ")
    return found


def test_only_the_settings_read_the_environment() -> None:
    reads = {m: environment_reads(m) for m in all_modules() if m not in READS_ENV}
    assert {m: r for m, r in reads.items() if r} == {}
    assert environment_reads("coldstart.failpoints")  # the finder sees a read where there is one


@pytest.mark.parametrize("name", all_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                  verbose=False)
    assert failures == 0
