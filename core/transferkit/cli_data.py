"""The command line's data command: ``transferkit cache`` (the on-disk feature cache)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cache(args: argparse.Namespace) -> int:
    from . import feature_store

    root = args.dir or str(feature_store.home())
    found = feature_store.entries(root)
    others = feature_store.foreign(root)
    total = sum(e["bytes"] for e in found)
    left = (
        f"; left alone {len(others)} item(s) that are not cache entries: "
        f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"
        if others
        else ""
    )
    if args.clear:
        freed = feature_store.clear(root)
        print(f"cleared {len(found)} entries ({freed / 2**20:.1f} MiB) in {root}{left}")
        return 0
    if args.json:
        doc = {"dir": root, "bytes": total, "entries": found, "not_entries": others}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"feature cache {root}: {len(found)} entries, {total / 2**20:.1f} MiB{left}")
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
    c.add_argument("--clear", action="store_true", help="remove every entry (nothing else)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cache)
