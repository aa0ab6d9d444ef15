#!/usr/bin/env python3
"""No import circle between a crate's files (issue 24).

For every crate of the workspace, each `.rs` file under `src/` is a module (`a/b.rs` and
`a/b/mod.rs` are `a::b`; `lib.rs`, `main.rs` the root). A `use crate::x::y…` or
`use super::…` (also inside braces and in paths such as `crate::x::f(…)`) is an edge from
the file to the module file it names (the longest module prefix of the path). Edges
between a module and its own ancestors are left out: a child reading its parent's items
and a parent re-exporting its children is how Rust modules nest, not a circle between
files. Test modules (`tests.rs`, `*_tests.rs`) are left out too. Fails naming every
circle among the rest (a strongly connected set of two or more files).
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_of(src: pathlib.Path, file: pathlib.Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def crate_circles(src: pathlib.Path) -> list:
    files = {}
    for file in src.rglob("*.rs"):
        if file.name == "tests.rs" or file.name.endswith("_tests.rs"):
            continue
        files[module_of(src, file)] = file
    edges = {m: set() for m in files}
    for module, file in files.items():
        # `super` of a file module is its parent; of lib.rs/mod.rs the same rule holds
        # since `module` already names the directory module.
        text = file.read_text()
        # Drop line comments and doc comments: links in docs are not imports.
        text = "\n".join(line.split("//")[0] for line in text.splitlines())
        for kind, rest in PATH.findall(text):
            names = [n for n in rest.split("::") if n]
            base = list(module) if kind == "crate" else list(module[:-1])
            if kind == "crate":
                base = []
            while names and names[0] == "super":
                base = base[:-1]
                names = names[1:]
            path = base + names
            target = None
            for cut in range(len(path), -1, -1):
                if tuple(path[:cut]) in files:
                    target = tuple(path[:cut])
                    break
            if target is None or target == module:
                continue
            # Ancestor or descendant: nesting, not a circle between files.
            if module[: len(target)] == target or target[: len(module)] == module:
                continue
            edges[module].add(target)
    # Tarjan's strongly connected components.
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(str(files[m].relative_to(ROOT)) for m in component))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    circles = []
    for manifest in sorted(ROOT.glob("*/Cargo.toml")) + [ROOT / "Cargo.toml"]:
        src = manifest.parent / "src"
        if src.is_dir():
            circles += crate_circles(src)
    for circle in circles:
        print("[imports] files import each other in a circle: " + " ↔ ".join(circle), file=sys.stderr)
    if not circles:
        print("[imports] no import circle between files")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
