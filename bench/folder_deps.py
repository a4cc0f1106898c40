#!/usr/bin/env python3
"""Which folders of Sources/TernServer name what other folders declare (issue #18).

A rough static analysis: comments and string literals are stripped; a file in folder A
depends on folder B when it names a top-level type B declares (`class|struct|enum|protocol|
typealias|actor` at column 0) or calls a top-level function (column 0) whose name only B
declares. Members are not followed: within one module a call through an inferred type names
nothing, so this undercounts; read the code too. Nested types (`ServerConnection.State`) are not counted, so two folders'
private `State` enums do not make an edge.

Prints `A -> B: count  Name@file ...`, one line per edge, then the folders in layer order.
Exits 1 when the folders' graph has a cycle (printing it), 0 otherwise.

    python3 bench/folder_deps.py [Sources/TernServer]
"""
import collections
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else 'Sources/TernServer'
decl = {}   # name -> folders declaring it
files = {}
for d in sorted(os.listdir(root)):
    if not os.path.isdir(os.path.join(root, d)):
        continue
    for f in sorted(os.listdir(os.path.join(root, d))):
        if not f.endswith('.swift'):
            continue
        p = os.path.join(root, d, f)
        s = open(p).read()
        s = re.sub(r'//[^\n]*', '', s)
        s = re.sub(r'/\*.*?\*/', '', s, flags=re.S)
        s = re.sub(r'"""(.|\n)*?"""', '""', s)
        s = re.sub(r'"(\\.|[^"\\\n])*"', '""', s)
        files[p] = (d, s)
        for m in re.finditer(r'^(?:(?:public|internal|private|fileprivate|final|package|nonisolated|@\w+(?:\([^)]*\))?)\s+)*'
                             r'(?:class|struct|enum|protocol|typealias|actor)\s+(\w+)', s, re.M):
            decl.setdefault(m.group(1), set()).add(d)
        for m in re.finditer(r'^(?:(?:public|internal|private|fileprivate|static|final|mutating|nonisolated|'
                             r'@inline\(\w+\)|@inlinable|@discardableResult)\s+)*func\s+(\w+)', s, re.M):
            decl.setdefault('.' + m.group(1), set()).add(d)

edges = collections.defaultdict(lambda: collections.defaultdict(set))
for p, (d, s) in files.items():
    for name in set(re.findall(r'\b([A-Z]\w+)\b', s)):
        for dd in decl.get(name, ()):
            if dd != d:
                edges[d][dd].add((name, os.path.basename(p)))
    for call in set(re.findall(r'\b(\w+)\(', s)):
        ds = decl.get('.' + call, set())
        if d in ds or len(ds) != 1:
            continue
        edges[d][next(iter(ds))].add(('.' + call, os.path.basename(p)))

for a in sorted(edges):
    for b in sorted(edges[a]):
        items = sorted(edges[a][b])
        print(f"{a} -> {b}: {len(items)}  " + ", ".join(f"{n}@{f}" for n, f in items[:12]))

# Cycle check: Tarjan's strongly connected components over folders.
folders = sorted({d for d, _ in files.values()})
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop(); on.discard(w); scc.append(w)
            if w == v:
                break
        sccs.append(sorted(scc))

for v in folders:
    if v not in index:
        visit(v)
cycles = [c for c in sccs if len(c) > 1]
if cycles:
    for c in cycles:
        print('cycle among: ' + ', '.join(c))
        for a in c:
            for b in c:
                if b in edges[a]:
                    print(f'  {a} -> {b}: ' + ', '.join(f'{n}@{f}' for n, f in sorted(edges[a][b])[:8]))
    sys.exit(1)
# Tarjan emits components callees first: reversed, that is top layer first.
print('layers (top first): ' + ' > '.join(c[0] for c in reversed(sccs)))
