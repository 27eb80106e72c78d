"""The architecture, checked: service -> compressors -> (nothing of ours but
the generated client), cache on its own, no import cycles (imports inside
functions count), and a request flow that names no compressor."""

import ast
from pathlib import Path

from compressors.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "compressors", "cache")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Our modules that `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
            # `from . import x` imports the module x; `from .m import f` imports m.
            found.update(subs if subs else [module])
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_compressors_import_nothing_from_service_or_cache():
    bad = {(a, b) for a, deps in graph().items() if a.startswith("compressors")
           for b in deps if b.startswith(("service", "cache"))}
    assert not bad


def test_cache_imports_nothing_from_service_or_compressors():
    bad = {(a, b) for a, deps in graph().items() if a.startswith("cache")
           for b in deps if b.startswith(("service", "compressors"))}
    assert not bad


def test_no_import_cycles():
    g = graph()

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in g[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted((a, b) for a, deps in g.items() for b in deps if a in reachable(b))
    assert not cycles


def test_the_request_flow_names_no_compressor():
    source = (ROOT / "service" / "pipeline.py").read_text()
    assert REGISTRY
    for name in REGISTRY:
        assert name not in source
