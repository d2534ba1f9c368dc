"""`lramlab tasks`: the manifests' tasks and whether their domain's simulator runs on this machine."""
from __future__ import annotations

import argparse
import json
import sys

from lramlab.envs import domain_available
from lramlab.manifests import DOMAINS, ENV_VAR, SPLITS, ManifestError, list_tasks


def _availability(domain: str) -> tuple[bool, str]:
    try:
        ok, reason = domain_available(domain)
    except Exception as e:  # noqa: BLE001
        return False, f"domain_available({domain!r}) raised {type(e).__name__}: {e}"
    return bool(ok), str(reason or "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lramlab tasks",
                                description="List tasks from the manifests and whether they run here.")
    p.add_argument("--domain", choices=DOMAINS)
    p.add_argument("--split", choices=SPLITS)
    p.add_argument("--json", action="store_true", help="one JSON list on stdout")
    p.add_argument("--manifests", default=None, help=f"manifest directory (default ${ENV_VAR} or data_manifests/)")
    args = p.parse_args(argv)
    try:
        tasks = list_tasks(args.domain, args.split, directory=args.manifests)
    except ManifestError as e:
        print(f"lramlab tasks: {e}", file=sys.stderr)
        return 1
    avail = {d: _availability(d) for d in dict.fromkeys(s.domain for s in tasks)}
    rows = []
    for s in tasks:
        ok, reason = avail[s.domain]
        row = {"domain": s.domain, "name": s.name, "id": s.id, "split": s.split, "env_id": s.env_id,
               "available": ok}
        if not ok:
            row["reason"] = reason
        rows.append(row)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no tasks match")
        return 0
    w = max(len(r["id"]) for r in rows)
    print(f"{'id':<{w}}  {'split':<7}  available")
    for r in rows:
        print(f"{r['id']:<{w}}  {r['split']:<7}  {'yes' if r['available'] else 'no'}")
    print()
    for d, (ok, reason) in avail.items():
        n_train = sum(r["domain"] == d and r["split"] == "train" for r in rows)
        n_hold = sum(r["domain"] == d and r["split"] == "holdout" for r in rows)
        line = f"{d}: {n_train + n_hold} tasks ({n_train} train, {n_hold} holdout), available: {'yes' if ok else 'no'}"
        print(line + ("" if ok else f" ({reason})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
