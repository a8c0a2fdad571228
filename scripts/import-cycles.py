#!/usr/bin/env python3
"""List import cycles between the modules of src/ (issue 8's check: imports go down).

A module is a file (`src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`). An edge a → b is any
`crate::b…` path (or `super::…` resolved) in a's non-test code. A reference to a parent from its
own submodule (`schedule::outcome` → `schedule`, e.g. for a re-export) is not counted. Exit 1 if
any cycle is found, printing each strongly connected component.
"""
import os, re, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
mods = {}
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(d, f), root)
        if rel.startswith("bin/") or rel in ("main.rs", "lib.rs"):
            continue
        parts = rel[:-3].split(os.sep)
        if parts[-1] == "mod":
            parts = parts[:-1]
        mods["::".join(parts)] = os.path.join(d, f)

def strip_tests(text):
    i = text.find("#[cfg(test)]\nmod tests")
    return text if i < 0 else text[:i]

def resolve(path):
    parts = path.split("::")
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in mods:
            return cand
    return None

edges = {m: set() for m in mods}
for m, f in mods.items():
    text = strip_tests(open(f).read())
    text = re.sub(r"//[^\n]*", "", text)
    # expand `use crate::{a, b::c}` groups one level
    for g in re.finditer(r"crate::\{([^}]*)\}", text):
        for item in g.group(1).split(","):
            item = item.strip().split(" ")[0]
            if item:
                t = resolve(item)
                if t and t != m and not m.startswith(t + "::"):
                    edges[m].add(t)
    for p in re.findall(r"crate((?:::\w+)+)", text):
        t = resolve(p[2:])
        if t and t != m and not m.startswith(t + "::"):
            edges[m].add(t)
    base = m.split("::")
    is_dir_mod = f.endswith("mod.rs")
    parent = base if is_dir_mod else base[:-1]
    for p in re.findall(r"\bsuper((?:::\w+)+)", text):
        t = resolve("::".join(parent[:-1] + p[2:].split("::")) if is_dir_mod else "::".join(parent + p[2:].split("::")))
        if t and t != m and not m.startswith(t + "::"):
            edges[m].add(t)

# Tarjan's SCC
index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1:
            out.append(sorted(comp))
for v in sorted(mods):
    if v not in index:
        visit(v)
if "-v" in sys.argv:
    for m in sorted(edges):
        print(f"{m} -> {', '.join(sorted(edges[m]))}")
if out:
    for c in out:
        print("cycle:", " ↔ ".join(c))
    sys.exit(1)
print(f"no import cycles among {len(mods)} modules")
