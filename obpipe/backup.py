"""``obpipe backup --to DIR`` and ``obpipe restore --from DIR``: the tick store and the
SQLite stores (the exchange's orders/fills/positions store, the story service's db), with
a manifest that lets a restore prove it put back what was taken.

- Tick store: ClickHouse's own ``BACKUP DATABASE ticks TO File(DIR/ticks)`` (parts,
  tables and the bar views; ``obpipe.ticks.store.backup``).  chdb lets one process at a
  time open a store, so a store a running recorder holds cannot be backed up from here:
  the command says so, names the pid, and nothing is written.
- SQLite: the online backup API (``sqlite3.Connection.backup``, all pages in one step:
  one read snapshot, so a writer that keeps committing in WAL mode neither waits nor
  tears the copy); the copy is switched to a self-contained rollback-journal file and
  ``quick_check``-ed.
- ``DIR/manifest.json`` (written last: a backup without one is incomplete): per item its
  kind, source path, UTC epoch ns of the snapshot, rows and a content digest per table,
  and the size and sha256 of every file.  ``restore`` checks every file's sha256 before
  touching any target (ClickHouse's RESTORE does not check its parts; a damaged one
  would only show when read), restores into empty targets (``--force`` to replace a
  store), then compares the restored tables' rows and digests with the manifest.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "obpipe-backup"
VERSION = 1
#: What a backup holds: the tick store, exchange stores (any SQLite file), story dbs.
KINDS = ("ticks", "store", "story")
_SQLITE_MAGIC = b"SQLite format 3\x00"


class BackupError(RuntimeError):
    """The backup or restore cannot go on; the message says why and what to do."""


# --- files --------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path, rel: str) -> dict[str, dict]:
    """Every file of ``root/rel`` (a file or a tree) -> {path relative to root: bytes, sha256}."""
    top = root / rel
    paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


# --- SQLite ---------------------------------------------------------------------------------


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == _SQLITE_MAGIC


def _ro_uri(path: str | Path) -> str:
    """A read-only SQLite URI for ``path`` (percent-encoded: any file name works)."""
    return Path(path).resolve().as_uri() + "?mode=ro"


def sqlite_digests(path: str | Path, readonly: bool = True) -> dict[str, dict]:
    """Per table: rows and the sha256 of its rows in sorted order (every column a sort
    key, so the digest does not depend on where SQLite keeps them)."""
    con = sqlite3.connect(_ro_uri(path), uri=True) if readonly else sqlite3.connect(path)
    try:
        out = {}
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                           "'sqlite_%' ORDER BY name")]
        for t in names:
            q = '"' + t.replace('"', '""') + '"'
            ncol = len(con.execute(f"PRAGMA table_info({q})").fetchall())
            h, n = hashlib.sha256(), 0
            for row in con.execute(f"SELECT * FROM {q} ORDER BY {', '.join(str(i + 1) for i in range(ncol))}"):
                h.update(repr(row).encode())
                h.update(b"\n")
                n += 1
            out[t] = {"rows": n, "digest": h.hexdigest()}
        return out
    finally:
        con.close()


def sqlite_backup(src: Path, dest: Path) -> dict[str, dict]:
    """Copy the SQLite database ``src`` (in use or not) to the new file ``dest`` with the
    online backup API; returns its tables' rows and digests (of the copy: the snapshot)."""
    if not _is_sqlite(src):
        raise BackupError(f"{src}: not a SQLite database")
    tmp = dest.with_name(dest.name + ".tmp")
    s = sqlite3.connect(_ro_uri(src), uri=True, timeout=30.0)
    try:
        d = sqlite3.connect(tmp)
        try:
            s.backup(d)  # pages=-1: every page in one step, under one read snapshot
            d.execute("PRAGMA journal_mode=DELETE")  # the copy: one self-contained file, no -wal
            ok = d.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            d.close()
    finally:
        s.close()
    if ok != "ok":
        tmp.unlink()
        raise BackupError(f"{src}: the copy fails SQLite's quick_check ({ok}): the source may be damaged")
    os.replace(tmp, dest)
    return sqlite_digests(dest)


def _sqlite_target_state(p: Path) -> str:
    """'empty' (no file, or 0 bytes, and no -wal/-shm), 'sqlite' or 'other'."""
    side = [Path(f"{p}-wal"), Path(f"{p}-shm")]
    if not p.exists():
        return "empty" if not any(s.exists() for s in side) else "sqlite"
    if p.is_dir():
        return "other"
    if p.stat().st_size == 0:
        return "empty" if not any(s.exists() for s in side) else "sqlite"
    return "sqlite" if _is_sqlite(p) else "other"


def sqlite_restore(src: Path, dest: Path) -> None:
    """Copy the backup file ``src`` into ``dest``: a new file is written beside it and
    renamed (it appears whole or not at all); an existing database (``--force``) is
    overwritten page by page through SQLite, which keeps its -wal consistent."""
    s = sqlite3.connect(_ro_uri(src), uri=True)
    try:
        if dest.exists() and dest.stat().st_size > 0:
            d = sqlite3.connect(dest, timeout=30.0)
            try:
                s.backup(d)
            finally:
                d.close()
            return
        for side in (Path(f"{dest}-wal"), Path(f"{dest}-shm")):  # (no database: stale leftovers)
            side.unlink(missing_ok=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".restoring")
        tmp.unlink(missing_ok=True)
        d = sqlite3.connect(tmp)
        try:
            s.backup(d)
        finally:
            d.close()
        os.replace(tmp, dest)
    finally:
        s.close()


# --- what to back up ----------------------------------------------------------------------


def _config(config: str | None, instance: str | None):
    from obpipe import config as cfgmod

    cfg = cfgmod.load(config)
    return cfgmod.replace(cfg, instance={"name": instance}) if instance else cfg


def default_ticks(cfg) -> str:
    """The instance's tick store directory (``[ticks] where``, else its state directory)."""
    from obpipe import config as cfgmod

    return cfgmod.ticks_where(cfg)


def default_stores(cfg) -> list[str]:
    """The exchange stores the config and the instance point at (``[exchange] store``, the
    store beside ``[exchange] journal``, the latest ``obpipe run --source exchange``'s)."""
    from obpipe import config as cfgmod
    from obpipe.exchange.store import default_store

    x = cfg.exchange
    out = []
    if x.store and x.store != "off":
        out.append(x.store.removeprefix("sqlite:///"))
    if x.journal:
        out.append(default_store(x.journal))
    out.append(str(cfgmod.run_exchange_store(cfg.instance.name)))
    return out


# --- backup -------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _store_spool(where: str) -> None:
    """Rows a stopped recorder left in its spool go into the store before it is backed up
    (the spool itself is not part of a backup)."""
    from obpipe.ticks.spool import spool_dir, store_leftovers
    from obpipe.ticks.store import TickStore

    if os.path.exists(os.path.join(spool_dir(where), "id")):
        with TickStore.open(where) as st:
            store_leftovers(where, st)


def backup(to: str | Path, ticks: str | None = None, stores=(), story=(), instance: str | None = None,
           say=_say) -> dict:
    """Back up the tick store at ``ticks`` (a directory, or None) and the SQLite files
    ``stores`` (exchange stores) and ``story`` into the new or empty directory ``to``;
    returns the manifest (also written to ``to/manifest.json``).  Nothing is left in
    ``to`` if it fails."""
    from obpipe.ticks import store as ticks_store

    dest = Path(to).resolve()
    if dest.exists() and not _is_empty_dir(dest):
        raise BackupError(f"{dest} is not empty: a backup goes into a new or empty directory")
    plan: list[tuple[str, Path]] = []
    if ticks:
        src = Path(ticks).resolve()
        if "://" in str(ticks):
            raise BackupError(f"tick store {ticks}: a ClickHouse server is backed up with its own BACKUP command")
        if not (src / "metadata").is_dir():
            raise BackupError(f"{src}: no tick store there")
        pid = ticks_store.lock_holder(str(src))
        if pid is not None:
            who = f"process {pid}" if pid > 0 else "another process"
            raise BackupError(
                f"tick store {src} is in use by {who} (the tick recorder of a running `obpipe run`?): embedded "
                "ClickHouse lets one process at a time open a store, so it cannot be read from here while that "
                "process runs. Stop the run (Ctrl-C in its terminal, or SIGTERM to its pid) and back up again; the "
                "SQLite stores can be backed up while they are written (leave out --ticks, give --store/--story). "
                "Nothing was written")
        plan.append(("ticks", src))
    for kind, files in (("store", stores), ("story", story)):
        for f in files:
            if "://" in str(f) and not str(f).startswith("sqlite:///"):
                raise BackupError(f"{f}: only SQLite files are backed up here (pg_dump backs up PostgreSQL)")
            p = Path(str(f).removeprefix("sqlite:///")).resolve()
            if not p.is_file():
                raise BackupError(f"{p}: no such file")
            if not _is_sqlite(p):
                raise BackupError(f"{p}: not a SQLite database")
            if any(q == p for _, q in plan):
                continue
            plan.append((kind, p))
    if not plan:
        raise BackupError("nothing to back up: no tick store and no SQLite store found or given")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "created_ns": time.time_ns(), "host": socket.gethostname(),
                "instance": instance, "items": []}
    try:
        used = set()
        for kind, src in plan:
            t0 = time.monotonic()
            taken_ns = time.time_ns()
            if kind == "ticks":
                rel = "ticks"
                _store_spool(str(src))
                got = ticks_store.backup(str(src), str(dest / rel))
                item = {"kind": kind, "source": str(src), "path": rel, "taken_ns": taken_ns,
                        "engine": {"chdb": got["chdb"], "clickhouse": got["clickhouse"]}, "tables": got["tables"]}
            else:
                rel = f"{kind}-{src.name}"
                i = 2
                while rel in used:
                    rel, i = f"{kind}{i}-{src.name}", i + 1
                item = {"kind": kind, "source": str(src), "path": rel, "taken_ns": taken_ns,
                        "tables": sqlite_backup(src, dest / rel)}
            used.add(rel)
            item["files"] = _files(dest, rel)
            item["seconds"] = round(time.monotonic() - t0, 3)
            manifest["items"].append(item)
            say(f"{kind:6} {src} -> {dest / rel}: {_rows(item['tables'])}; "
                f"{_mb(item['files'])}, {item['seconds']:.2f} s")
        manifest["finished_ns"] = time.time_ns()
        tmp = dest / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, dest / MANIFEST)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for p in dest.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise
    return manifest


def _rows(tables: dict) -> str:
    return ", ".join(f"{t} {v['rows']}" for t, v in tables.items()) or "no tables"


def _mb(files: dict) -> str:
    return f"{sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB, {len(files)} file(s)"


# --- check and restore ----------------------------------------------------------------------


def load_manifest(src: str | Path) -> dict:
    p = Path(src).resolve() / MANIFEST
    if not p.is_file():
        raise BackupError(f"{p.parent}: no {MANIFEST}: not an obpipe backup, or one that did not finish")
    try:
        m = json.loads(p.read_text())
    except ValueError as e:
        raise BackupError(f"{p}: unreadable ({e})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise BackupError(f"{p}: format {m.get('format')!r} version {m.get('version')!r}, want {FORMAT!r} {VERSION}")
    for it in m.get("items", []):  # (a hand-edited manifest must not point outside the backup)
        if it.get("kind") not in KINDS or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(it.get("path"))) \
                or any(not str(f).startswith(it["path"]) or ".." in f.split("/") for f in it.get("files", {})):
            raise BackupError(f"{p}: item {it.get('kind')!r} {it.get('path')!r} is not one this program writes")
    return m


def check(src: str | Path) -> dict:
    """The manifest of backup ``src`` after checking every file's size and sha256
    (and that no file is missing or extra); BackupError lists what is wrong."""
    root = Path(src).resolve()
    m = load_manifest(root)
    bad = []
    for item in m["items"]:
        want = item["files"]
        have = {p.relative_to(root).as_posix() for p in ((root / item["path"]).rglob("*")
                                                       if (root / item["path"]).is_dir() else [root / item["path"]])
                if p.is_file()}
        for rel in sorted(set(want) - have):
            bad.append(f"{rel}: missing")
        for rel in sorted(have - set(want)):
            bad.append(f"{rel}: not in the manifest")
        for rel in sorted(set(want) & have):
            p = root / rel
            if p.stat().st_size != want[rel]["bytes"]:
                bad.append(f"{rel}: {p.stat().st_size} bytes, the manifest says {want[rel]['bytes']}")
            elif sha256_file(p) != want[rel]["sha256"]:
                bad.append(f"{rel}: sha256 differs from the manifest's (damaged)")
    if bad:
        shown = "; ".join(bad[:10]) + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else "")
        raise BackupError(f"backup {root} is damaged ({len(bad)} problem(s)): {shown}")
    return m


def restore(src: str | Path, to_ticks: str | None = None, to_stores=(), to_story=(), only=None,
            force: bool = False, say=_say) -> dict:
    """Restore backup ``src``: every item (or the kinds in ``only``) into its target
    (``to_ticks``; ``to_stores`` / ``to_story`` in the manifest's order; else where it was
    backed up from).  Checks the files first, refuses non-empty targets unless ``force``,
    and compares the restored tables with the manifest.  Returns {"items": [...], "ok"}."""
    from obpipe.ticks import store as ticks_store

    root = Path(src).resolve()
    m = check(root)
    items = [it for it in m["items"] if only is None or it["kind"] in only]
    if not items:
        raise BackupError(f"backup {root} holds nothing of {', '.join(only or KINDS)}")
    given = {"ticks": [to_ticks] if to_ticks else [], "store": list(to_stores), "story": list(to_story)}
    for kind, targets in given.items():
        n = sum(1 for it in items if it["kind"] == kind)
        if len(targets) > n:
            raise BackupError(f"{len(targets)} target(s) for {kind} given, the backup has {n} {kind} item(s)")
    plan, refused = [], []
    for it in items:
        targets = given[it["kind"]]
        target = Path(targets.pop(0) if targets else it["source"]).resolve()
        if it["kind"] == "ticks":
            if target.exists() and not target.is_dir():
                refused.append(f"{target}: exists and is not a directory")
            elif target.exists() and not _is_empty_dir(target):
                if not force:
                    refused.append(f"{target}: not empty (give an empty or new --to-ticks, or --force to replace "
                                   "the tick store there)")
                elif not (target / "metadata").is_dir():
                    refused.append(f"{target}: not empty and not a tick store: not replaced, even with --force")
                elif (pid := ticks_store.lock_holder(str(target))) is not None:
                    refused.append(f"{target}: in use by process {pid} (a running recorder?): stop it first")
        else:
            state = _sqlite_target_state(target)
            if state == "other":
                refused.append(f"{target}: exists and is not a SQLite database: not replaced, even with --force")
            elif state == "sqlite" and not force:
                opt = "--to-store" if it["kind"] == "store" else "--to-story"
                refused.append(f"{target}: exists (give a new {opt} FILE, or --force to overwrite it; stop the "
                               "process that writes it first)")
        plan.append((it, target))
    if refused:
        raise BackupError("restore refused, nothing restored: " + "; ".join(refused))
    out = {"backup": str(root), "items": [], "ok": True}
    for it, target in plan:
        t0 = time.monotonic()
        if it["kind"] == "ticks":
            got = ticks_store.restore(str(root / it["path"]), str(target), replace=force)
        else:
            sqlite_restore(root / it["path"], target)
            got = sqlite_digests(target, readonly=False)
        diff = [f"{t}: {got.get(t, {}).get('rows', 'missing')} rows, backed up {v['rows']}"
                if got.get(t, {}).get("rows") != v["rows"] else f"{t}: contents differ from the backup's"
                for t, v in it["tables"].items() if got.get(t) != v]
        diff += [f"{t}: not in the backup" for t in got if t not in it["tables"]]
        res = {"kind": it["kind"], "target": str(target), "tables": got, "ok": not diff, "problems": diff,
               "seconds": round(time.monotonic() - t0, 3)}
        out["items"].append(res)
        out["ok"] &= not diff
        verdict = "rows and contents equal the backup's" if not diff else "DIFFERS: " + "; ".join(diff)
        say(f"{it['kind']:6} {root / it['path']} -> {target}: {_rows(got)}; {verdict} ({res['seconds']:.2f} s)")
    return out


# --- command line -----------------------------------------------------------------------------


def _backup_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="obpipe backup", description="Back up the tick store and the SQLite stores into a new directory, with a "
        "manifest (rows, content digests, sha256 of every file). With none of --ticks/--store/--story: the "
        "instance's tick store and exchange store, those that exist.")
    p.add_argument("--to", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--ticks", nargs="?", const="", metavar="DIR",
                   help="the tick store (no DIR: the instance's, [ticks] where or <state dir>/ticks)")
    p.add_argument("--store", action="append", nargs="?", const="", metavar="FILE",
                   help="a SQLite exchange store (no FILE: the instance's; repeatable)")
    p.add_argument("--story", action="append", metavar="FILE", help="the story service's SQLite db (repeatable)")
    p.add_argument("--config", help="TOML config (default: configs/default.toml)")
    p.add_argument("--instance", help="instance name (its state directory holds the default stores)")
    p.add_argument("--json", action="store_true", help="the manifest as JSON on stdout")
    return p


def _restore_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="obpipe restore", description="Restore an obpipe backup into empty targets (default: where each item "
        "was backed up from), after checking every file's sha256; then compare the restored tables' rows and "
        "contents with the manifest. Exit 0 equal, 1 different after restoring, 2 refused.")
    p.add_argument("--from", dest="src", required=True, metavar="DIR", help="the backup directory")
    p.add_argument("--to-ticks", metavar="DIR", help="restore the tick store here (new or empty)")
    p.add_argument("--to-store", action="append", default=[], metavar="FILE",
                   help="restore the exchange store(s) here, in the backup's order (repeatable)")
    p.add_argument("--to-story", action="append", default=[], metavar="FILE", help="restore the story db here")
    p.add_argument("--only", action="append", choices=KINDS, help="restore these kinds only (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty target that is a store of the same kind (never anything else)")
    p.add_argument("--check", action="store_true", help="only check the backup's files against the manifest")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    return p


def main(argv: list[str]) -> int:
    """``obpipe backup ...`` / ``obpipe restore ...`` (argv[0] names which)."""
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "backup":
            a = _backup_parser().parse_args(rest)
            from obpipe import config as cfgmod

            try:
                cfg = _config(a.config, a.instance)
            except cfgmod.ConfigError as e:
                raise BackupError(f"config: {e}") from None
            say = _say if a.json else print
            found = [f for f in default_stores(cfg) if Path(f).is_file()]
            if a.ticks is None and not a.store and not a.story:  # nothing named: what the instance has
                t = default_ticks(cfg)
                ticks = t if (Path(t) / "metadata").is_dir() else None
                if ticks is None:
                    say(f"(no tick store at {t})")
                stores = found
                if not stores:
                    say(f"(no exchange store: looked at {', '.join(default_stores(cfg))})")
            else:
                ticks = (a.ticks or default_ticks(cfg)) if a.ticks is not None else None
                stores = [s for s in (a.store or []) if s]
                if "" in (a.store or []):
                    if not found:
                        raise BackupError(f"instance {cfg.instance.name!r} has no exchange store (looked at "
                                          f"{', '.join(default_stores(cfg))}); give --store FILE")
                    stores += found
            m = backup(a.to, ticks, stores, a.story or [], instance=cfg.instance.name, say=say)
            if a.json:
                print(json.dumps(m))
            else:
                print(f"backup {Path(a.to).resolve()}: {len(m['items'])} item(s), manifest {MANIFEST}")
            return 0
        a = _restore_parser().parse_args(rest)
        if a.check:
            m = check(a.src)
            n = sum(len(it["files"]) for it in m["items"])
            print(json.dumps({"ok": True, "items": len(m["items"]), "files": n}) if a.json else
                  f"backup {Path(a.src).resolve()}: {len(m['items'])} item(s), {n} file(s), every sha256 matches")
            return 0
        got = restore(a.src, a.to_ticks, a.to_store, a.to_story, set(a.only) if a.only else None, a.force,
                      say=_say if a.json else print)
        if a.json:
            print(json.dumps(got))
        elif got["ok"]:
            print(f"restored {len(got['items'])} item(s) from {got['backup']}: every table equals the backup")
        else:
            print(f"restore from {got['backup']}: some tables differ from the backup (above)", file=sys.stderr)
        return 0 if got["ok"] else 1
    except BackupError as e:
        print(f"obpipe {cmd}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the tick store's refusals (StoreError), OS and SQLite errors: said, not a traceback
        from obpipe.ticks import StoreError

        if isinstance(e, (StoreError, OSError, sqlite3.Error)):
            print(f"obpipe {cmd}: {e}", file=sys.stderr)
            return 2
        raise
