"""The command line's data command: ``transferkit cache`` (the on-disk feature cache)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cache(args: argparse.Namespace) -> int:
    from . import feature_store

    root = args.dir or str(feature_store.home())
    found = feature_store.entries(root)
    total = sum(e["bytes"] for e in found)
    if args.clear:
        freed = feature_store.clear(root)
        print(f"cleared {len(found)} entries ({freed / 2**20:.1f} MiB) in {root}")
        return 0
    if args.json:
        print(json.dumps({"dir": root, "bytes": total, "entries": found}, indent=2))
        return 0
    print(f"feature cache {root}: {len(found)} entries, {total / 2**20:.1f} MiB")
    for e in found:
        state = "" if e["complete"] else "  (partial: left by an interrupted run; --clear)"
        print(
            f"  {e['entry']:<60} {e['backbone'] or '?':<28} {e['examples'] or '?':>8} examples "
            f"{e['bytes'] / 2**20:9.1f} MiB{state}"
        )
    return 0


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("cache", help="the on-disk feature cache: sizes, or --clear")
    c.add_argument("--dir", help="the cache directory (default $TRANSFERKIT_HOME/features)")
    c.add_argument("--clear", action="store_true", help="remove every entry")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cache)
