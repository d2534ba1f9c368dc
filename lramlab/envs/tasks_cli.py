"""`lramlab tasks`: the manifests' tasks and whether their domain's simulator runs on this machine."""
from __future__ import annotations

import sys

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command
from lramlab.envs import domain_available, task_available
from lramlab.manifests import DOMAINS, ENV_VAR, SPLITS, list_tasks


def _availability(domain: str) -> tuple[bool, str]:
    try:
        ok, reason = domain_available(domain)
    except Exception as e:  # noqa: BLE001
        return False, f"domain_available({domain!r}) raised {type(e).__name__}: {e}"
    return bool(ok), str(reason or "")


@command("lramlab tasks")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="lramlab tasks", description="List tasks from the manifests and whether they run here.")
    p.add_argument("--domain", choices=DOMAINS)
    p.add_argument("--split", choices=SPLITS)
    add_json_option(p, "the tasks as one JSON list")
    p.add_argument("--manifests", default=None, help=f"manifest directory (default ${ENV_VAR} or data_manifests/)")
    args = p.parse_args(argv)
    with JsonOutput(args.json) as out:
        rows, avail = _rows(list_tasks(args.domain, args.split, directory=args.manifests))
        out.write(rows)
    if not out.to_stdout:
        _print_table(rows, avail)
    return 0


def _task_availability(spec) -> tuple[bool, str]:
    try:
        ok, reason = task_available(spec)
    except Exception as e:  # noqa: BLE001
        return False, f"task_available({spec.id!r}) raised {type(e).__name__}: {e}"
    return bool(ok), str(reason or "")


def _rows(tasks) -> tuple[list[dict], dict]:
    avail = {d: _availability(d) for d in dict.fromkeys(s.domain for s in tasks)}
    rows = []
    for s in tasks:
        ok, reason = avail[s.domain]
        if ok:  # the domain runs; a task may still need more (Mimicgen's task zoo)
            ok, reason = _task_availability(s)
        row = {"domain": s.domain, "name": s.name, "id": s.id, "split": s.split, "env_id": s.env_id,
               "available": ok}
        if not ok:
            row["reason"] = reason
        rows.append(row)
    return rows, avail


def _print_table(rows: list[dict], avail: dict) -> None:
    if not rows:
        print("no tasks match")
        return
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
        if ok:  # tasks of a runnable domain that cannot run here, by name with the reason
            for r in rows:
                if r["domain"] == d and not r["available"]:
                    print(f"  {r['id']}: no ({r['reason']})")


if __name__ == "__main__":
    sys.exit(main())
