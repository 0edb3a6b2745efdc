#!/usr/bin/env python3
"""Fail when the modules of the C tree include each other in a cycle.

Usage: include_cycles.py [SOURCE_ROOT]   (default: the repo this file is in)

A module is foo.c + foo.h of one directory (common/, gateway/, deductor/,
order-writer/, reconciler/, bench/). There is an edge A -> B when a file of
A includes B's header with a quoted #include "b.h" that resolves to a
header of A's directory or, outside common/, of common/. Headers that
resolve to neither (generated ones, system ones) are not followed, and a
module including its own header is no edge.

The umbrella headers (gateway/gateway.h, deductor/deductor.h,
order-writer/order_writer.h, reconciler/reconciler.h) list the modules of
their daemon for main.c and the tests. They are not module nodes: taken as
modules, their includes would make every module that includes them part of
a cycle. Yet a module may include its umbrella instead of the headers it
needs (most gateway/ and reconciler/ files do, as PgBouncer's include
bouncer.h), and ignoring those includes would hide exactly the
dependencies this check is for. So an include of an umbrella counts as an
include of each header the umbrella lists whose names the including file
uses: its functions, extern variables, macros, typedefs, enum constants
and struct/union/enum tags (forward declarations declare nothing). What
the umbrella declares itself (struct gateway, for one) belongs to no
module.

Exit status 1 with one "cycle: a -> b -> a" line per elementary cycle, each
followed by why every edge exists; else 0 and "no include cycles (N
modules)".
"""

import os
import re
import sys

DIRS = ("common", "gateway", "deductor", "order-writer", "reconciler", "bench")
COMMON = "common"
UMBRELLAS = ("gateway/gateway.h", "deductor/deductor.h",
             "order-writer/order_writer.h", "reconciler/reconciler.h")
# Enough for any real tree; a denser graph is reported by its first cycles.
MAX_CYCLES = 200

INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)
DEFINE_RE = re.compile(r'^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)', re.M)
IDENT_RE = re.compile(r"[A-Za-z_]\w*")
TAG_USE_RE = re.compile(r"\b(struct|union|enum)\s+([A-Za-z_]\w*)")
KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern
    float for goto if inline int long register restrict return short signed
    sizeof static struct switch typedef union unsigned void volatile while
    _Bool _Noreturn bool
""".split())


def strip_code(text, keep_strings=False):
    """text without comments, and without string and char literals unless
    keep_strings (an #include's "name" is one); newlines are kept."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j) or " ")
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1] if keep_strings else c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_directives(code):
    """code without preprocessor lines (continuations included)."""
    lines, skip = [], False
    for line in code.split("\n"):
        directive = skip or line.lstrip().startswith("#")
        skip = directive and line.endswith("\\")
        lines.append("" if directive else line)
    return "\n".join(lines)


def declared_names(header_text):
    """Names a header declares: (plain names, tag names)."""
    code = strip_code(header_text)
    names = set(DEFINE_RE.findall(code))
    tags = set()
    code = without_directives(code)
    # Walk top-level statements; a braced body is a struct/union/enum body
    # (tag and enum constants recorded) or an inline function's body.
    stmt, depth, body_start = [], 0, 0
    for i, c in enumerate(code):
        if depth == 0 and c == "{":
            depth, body_start = 1, i + 1
            head = "".join(stmt)
            m = re.search(r"\b(struct|union|enum)\s+([A-Za-z_]\w*)?\s*$", head)
            if m and m.group(2):
                tags.add(m.group(2))
            stmt.append("{}")
            continue
        if depth > 0:
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    head = "".join(stmt[:-1])
                    if re.search(r"\benum\s*\w*\s*$", head):
                        for item in code[body_start:i].split(","):
                            m = IDENT_RE.search(item)
                            if m:
                                names.add(m.group(0))
                    elif re.search(r"\)[\s\w()]*$", head):
                        _statement_names(head, names)   # inline function
                        stmt = []
            continue
        if c == ";":
            _statement_names("".join(stmt), names)
            stmt = []
        else:
            stmt.append(c)
    return names, tags


def _statement_names(stmt, names):
    """Add what one top-level declaration declares to names."""
    stmt = re.sub(r"__attribute__\s*\(\(.*?\)\)", " ", stmt, flags=re.S).strip()
    if not stmt:
        return
    words = IDENT_RE.findall(stmt)
    if stmt.startswith("typedef"):
        m = re.search(r"\(\s*\*\s*([A-Za-z_]\w*)\s*\)", stmt)
        if m:
            names.add(m.group(1))
        elif words:
            names.add(re.sub(r"\[.*", "", stmt).split()[-1].strip("*"))
        return
    paren = stmt.find("(")
    if paren >= 0:
        before = IDENT_RE.findall(stmt[:paren])
        if before and before[-1] not in KEYWORDS:
            names.add(before[-1])
        return
    if words and words[0] == "extern":
        last = IDENT_RE.findall(re.sub(r"[\[=].*", "", stmt, flags=re.S))
        if last:
            names.add(last[-1])


def used_names(code):
    """(identifiers, tags) a file mentions."""
    return set(IDENT_RE.findall(code)), {m.group(2) for m in TAG_USE_RE.finditer(code)}


class Tree:
    def __init__(self, root):
        self.root = root
        self.files = {}          # "dir/name" -> text
        for d in DIRS:
            path = os.path.join(root, d)
            if not os.path.isdir(path):
                continue
            for name in sorted(os.listdir(path)):
                if name.endswith((".c", ".h")):
                    with open(os.path.join(path, name), encoding="utf-8",
                              errors="replace") as f:
                        self.files[d + "/" + name] = f.read()
        self._decl = {}

    def resolve(self, src, inc):
        """The tree header src's #include "inc" names, or None."""
        d = src.split("/")[0]
        for cand in (d + "/" + inc, COMMON + "/" + inc if d != COMMON else None):
            if cand in self.files:
                return cand
        return None

    def includes(self, src):
        return [(inc, self.resolve(src, inc))
                for inc in INCLUDE_RE.findall(strip_code(self.files[src], True))]

    def declarations(self, header):
        if header not in self._decl:
            self._decl[header] = declared_names(self.files[header])
        return self._decl[header]


def module_of(path):
    return path[:-2]


def build_graph(tree):
    """(modules, edges: {a: {b: [reasons]}})."""
    modules = {module_of(p) for p in tree.files if p not in UMBRELLAS}
    edges = {m: {} for m in modules}

    def add(a, b, why):
        if a != b:
            edges[a].setdefault(b, []).append(why)

    for src in sorted(tree.files):
        if src in UMBRELLAS:
            continue
        a = module_of(src)
        code = None
        for inc, hdr in tree.includes(src):
            if hdr is None:
                continue
            if hdr not in UMBRELLAS:
                add(a, module_of(hdr), '%s includes "%s"' % (src, inc))
                continue
            if code is None:
                code = used_names(strip_code(tree.files[src]))
            idents, tags = code
            for inc2, listed in tree.includes(hdr):
                if listed is None or listed in UMBRELLAS or module_of(listed) == a:
                    continue
                names, decl_tags = tree.declarations(listed)
                hits = sorted(idents & names) + \
                    ["struct " + t for t in sorted(tags & decl_tags)]
                if hits:
                    shown = ", ".join(hits[:4]) + (", ..." if len(hits) > 4 else "")
                    add(a, module_of(listed), '%s uses %s of %s through "%s"'
                        % (src, shown, listed, inc))
    return modules, edges


def simple_cycles(edges):
    """Elementary cycles, each once, starting at its smallest module."""
    cycles = []
    nodes = sorted(edges)
    for start in nodes:
        # Only nodes after start: every cycle is found from its smallest node.
        stack = [(start, iter(sorted(edges[start])))]
        path, on_path = [start], {start}
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
                continue
            if nxt == start:
                cycles.append(path + [start])
                if len(cycles) >= MAX_CYCLES:
                    return cycles
            elif nxt > start and nxt not in on_path:
                path.append(nxt)
                on_path.add(nxt)
                stack.append((nxt, iter(sorted(edges[nxt]))))
    return cycles


def main(argv):
    root = argv[1] if len(argv) > 1 else \
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = Tree(root)
    if not tree.files:
        print("include_cycles: no .c/.h files under %s" % root, file=sys.stderr)
        return 2
    modules, edges = build_graph(tree)
    cycles = simple_cycles(edges)
    for cyc in cycles:
        print("cycle: " + " -> ".join(cyc))
        for a, b in zip(cyc, cyc[1:]):
            for why in edges[a][b]:
                print("    " + why)
    if len(cycles) >= MAX_CYCLES:
        print("(stopped after %d cycles)" % MAX_CYCLES)
    if cycles:
        return 1
    print("no include cycles (%d modules)" % len(modules))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
