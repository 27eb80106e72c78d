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


def declared(*classes: str) -> set[str]:
    """The members compressors/base.py's protocol `classes` declare."""
    tree = ast.parse((ROOT / "compressors" / "base.py").read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    out.add(item.target.id)
                elif isinstance(item, ast.FunctionDef):
                    out.add(item.name)
    return out


def compressor_reads(tree: ast.AST) -> tuple[set[tuple[int, str]], set[int]]:
    """(line, attribute) of every attribute read on a compressor in `tree`,
    and the lines of getattr/hasattr calls on one. A compressor is a name
    `compressor` or `comp`, an attribute `.compressor`, an item of the
    pipeline's `compressors` or `encoders` (what segments are encoded with),
    or a name a function binds from those (assigned, or looped over)."""

    def is_collection(node) -> bool:  # [self.|pipeline.|flow.]compressors / encoders, or a call on it
        while isinstance(node, ast.Call) or isinstance(node, ast.Attribute) and node.attr in (
                "values", "items", "get"):
            node = node.func if isinstance(node, ast.Call) else node.value
        if isinstance(node, ast.Name):
            return node.id in ("compressors", "encoders")
        return (isinstance(node, ast.Attribute) and node.attr in ("compressors", "encoders")
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "pipeline", "flow"))

    reads, getattrs = set(), set()
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:
        names = {"compressor", "comp"}
        for node in ast.walk(scope):
            if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name) \
                    and is_collection(node.iter):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign) and (
                    isinstance(node.value, ast.Subscript) and is_collection(node.value.value)
                    or isinstance(node.value, ast.Call) and is_collection(node.value)):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))

        def is_compressor(node) -> bool:
            return (isinstance(node, ast.Name) and node.id in names
                    or isinstance(node, ast.Attribute) and node.attr == "compressor"
                    or isinstance(node, ast.Subscript) and is_collection(node.value))

        for node in ast.walk(scope):
            if isinstance(node, ast.Attribute) and is_compressor(node.value):
                reads.add((node.lineno, node.attr))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr") and node.args and is_compressor(node.args[0]):
                getattrs.add(node.lineno)
    return reads, getattrs


def test_serving_code_reads_only_what_the_contract_declares():
    """The pipeline, server and batch job read of a compressor only what
    compressors/base.py's Compressor and SoftCompressor declare, and never
    by getattr: a capability a compressor has is in the contract. (Evaluation
    and benchmarks measure models and may read more.)"""
    allowed = declared("Compressor", "SoftCompressor")
    assert {"encode", "render", "count_tokens", "check_encoded", "pooling_factors", "dtype"} <= allowed
    seen = set()
    for path in sorted((ROOT / "service").rglob("*.py")):
        if {"evaluation", "benchmarks"} & set(path.relative_to(ROOT).parts):
            continue
        reads, getattrs = compressor_reads(ast.parse(path.read_text()))
        seen.update(attr for _, attr in reads)
        where = path.relative_to(ROOT)
        assert not getattrs, f"{where}:{getattrs}: getattr on a compressor"
        assert all(attr in allowed for _, attr in reads), \
            f"{where}: {[(line, a) for line, a in reads if a not in allowed]} are not in the contract"
    assert {"encode", "render", "segment", "budget", "rows"} <= seen  # the check sees the pipeline's reads


def test_the_contract_check_catches_an_undeclared_read():
    reads, getattrs = compressor_reads(ast.parse(
        "def info(self, flow):\n    for c in self.compressors.values():\n        c.tokenizer\n"
        "    x = getattr(flow.compressor, 'count_tokens', None)\n"
        "def check(req):\n    for c in req.contexts:\n        c.strip()\n"))
    assert reads == {(3, "tokenizer")} and getattrs == {4}


def test_no_compressor_is_named_like_the_sentence_vectors():
    """Cache keys name the encoder: a compressor called like selection's
    sentence vectors would read and write their entries."""
    from compressors import sentence_vectors

    assert sentence_vectors.NAME not in REGISTRY
