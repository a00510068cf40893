#!/usr/bin/env python3
"""No two source files call each other (issue 15, item 4).

Reads the symbols every object file of the programs and of sheaf_common
defines and uses (nm), makes the graph "file A uses a function or object
defined in file B", and fails naming every pair of files that use each
other.  A reader then finds any behaviour by following calls one way: a
program's main file -> its parts -> common/, never back.  Callbacks passed
as function pointers are not uses, which is how a lower file reaches back
up (a kind's start, a delivery hook).

usage: call_cycles.py BUILD_DIR
"""
import collections
import glob
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDRB":
            defined.add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
    return defined, used


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    objs = []
    for d in glob.glob(os.path.join(build, "**", "CMakeFiles", "*.dir"), recursive=True):
        target = os.path.basename(d)[:-4]
        if target == "sheaf_common" or target.startswith("sheaf"):
            objs += glob.glob(os.path.join(d, "**", "*.o"), recursive=True)
    if not objs:
        print(f"call_cycles: no object files under {build}: build first", file=sys.stderr)
        return 2
    owner, uses = {}, {}
    for o in objs:
        defined, used = symbols(o)
        uses[o] = used
        for s in defined:
            owner.setdefault(s, o)
    edges = collections.defaultdict(set)
    for o, used in uses.items():
        for s in used:
            if s in owner and owner[s] != o:
                edges[o].add(owner[s])

    def name(o):
        return o.split(".dir/", 1)[-1][:-2]

    pairs = sorted({tuple(sorted((name(a), name(b))))
                    for a in edges for b in edges[a] if a in edges.get(b, ())})
    for a, b in pairs:
        print(f"call_cycles: {a} and {b} call each other")
    print(f"call_cycles: {len(objs)} object files, {len(pairs)} pair(s) calling each other")
    return 1 if pairs else 0


if __name__ == "__main__":
    sys.exit(main())
