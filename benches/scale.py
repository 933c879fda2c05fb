#!/usr/bin/env python3
"""Scale table (issue 15): atosnap, restic and borg on grown runtimes of
several sizes, and a linear extrapolation to 50 GB.

    python3 benches/scale.py --atosnap target/release/atosnap \
        [--gib 1,2,4,8] [--trials 3] [--tools atosnap,restic,borg-lz4] \
        [--cache ~/.cache/atosnap-bench] [--scratch DIR] \
        [--json scale.json] [--md scale.md] [--prepare-only]
    # quick check of the whole path: --gib 0.1,0.25 --trials 1
    # (SHARED_BENCH=DIR if ../shared/bench is not beside the repository)

Runtimes (cached in --cache, built once, with --venv's python):
  rt-<G>g          ../shared/bench/grow_runtime.py --src <base> --gib G --seed 1,
                   base = --base (default <cache>/rt-130000, made with
                   make_runtime.py --vectors 130000 --seed 1 when missing)
  rt-<G>g.day      the day: a copy of rt-<G>g after mutate_runtime.py
                   --fraction 0.01 --seed 2 and mutate_blocks.py --dir
                   data/chroma --fraction 0.01 --seed 2, stored as a delta
                   against rt-<G>g (files/: new or rewritten files whole;
                   patches/: the changed 4 KiB blocks of large files; deleted)
                   so a size costs its runtime plus ~1 GB, not twice its runtime
  rt-<G>g.physics.json   physics.py --old rt-<G>g --new <the day>: the floors
  rt-<G>g.done     written last (holds the base's path); a size without it,
                   or grown from another --base, is rebuilt

A trial, for each tool in turn, on a fresh copy of rt-<G>g (new inodes):
  init; first snapshot (wall, store bytes, peak RSS); apply the day (files
  whole with their day mtime, patches written in place, as the HNSW does),
  wait 3 s; day snapshot (wall, store growth, RSS); no-change snapshot (wall,
  growth, RSS); verify reading all data (atosnap verify, restic check
  --read-data, borg check --verify-data; wall, RSS); the work copy is deleted,
  then full restore of the day into an empty dir (wall, RSS). Peak memory is
  the largest max-RSS of those commands (/usr/bin/time -f %M). With
  --every-command, atosnap's store also gets validate, diff, ls, stats, gc
  and cleanup (dry runs), drill, an in-place restore of the first
  snapshot onto the work copy and a copy of the day into a new store,
  each timed with its peak RSS, and counted in peak memory.

Disk: before preparing a size and before measuring it the free space of
--cache / --scratch is checked against what the step needs (prepare: twice
the runtime; measure: the work copy plus a store and a restore, each about
the runtime's size, 2.2x in all as the work copy is deleted before the
restore) plus --keep-free GB; a size that does not fit is skipped and said
so. Each trial's work copy, store and restore are deleted before the next.

Output: medians of --trials per size and tool, the floors, the ratios to
them, and least-squares lines y = a + b * runtime_GB through the sizes for
store growth per day and per no-change snapshot, peak memory and no-change
wall time, evaluated at --extrapolate-gb (default 50).
"""
import argparse
import filecmp
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from side_by_side import Atosnap, Borg, Restic, du, run  # noqa: E402

# ../shared/bench beside the repository (a worktree may sit one level deeper).
SHARED = os.environ.get("SHARED_BENCH") or next(
    (p for p in (os.path.normpath(os.path.join(HERE, *[".."] * up, "shared", "bench")) for up in (2, 3))
     if os.path.exists(os.path.join(p, "grow_runtime.py"))), os.path.join(HERE, "..", "..", "shared", "bench"))
BLOCK = 4096
PATCH_MIN = 64 << 20  # files at least this large are stored as changed blocks
REC = struct.Struct("<QI")  # a patch record: offset, length, then the bytes


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_bytes(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def sh(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def files_of(root):
    """Relative paths of the regular files under root, sorted."""
    out = []
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    return out


def changed_blocks(old, new):
    """(offset, bytes) of the 4 KiB blocks of new that differ from old (same size)."""
    with open(old, "rb") as fo, open(new, "rb") as fn:
        off = 0
        while True:
            a, b = fo.read(1 << 20), fn.read(1 << 20)
            if not b:
                return
            if a != b:
                for i in range(0, len(b), BLOCK):
                    if a[i:i + BLOCK] != b[i:i + BLOCK]:
                        yield off + i, b[i:i + BLOCK]
            off += len(b)


def make_delta(day1, day2, delta):
    """Stores day2 as a delta against day1 (see the module doc)."""
    os.makedirs(os.path.join(delta, "files"))
    os.makedirs(os.path.join(delta, "patches"))
    old, new = set(files_of(day1)), files_of(day2)
    whole = patched = 0
    for rel in new:
        src, base = os.path.join(day2, rel), os.path.join(day1, rel)
        size = os.path.getsize(src)
        if rel in old and os.path.getsize(base) == size and size >= PATCH_MIN:
            recs = list(changed_blocks(base, src))
            if not recs:
                continue
            if len(recs) * BLOCK < size // 2:
                dst = os.path.join(delta, "patches", rel + ".patch")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, "wb") as f:
                    for off, data in recs:
                        f.write(REC.pack(off, len(data)) + data)
                patched += len(recs)
                continue
        elif rel in old and os.path.getsize(base) == size and filecmp.cmp(base, src, shallow=False):
            continue
        dst = os.path.join(delta, "files", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
        whole += size
    with open(os.path.join(delta, "deleted.json"), "w") as f:
        json.dump(sorted(old - set(new)), f)
    log(f"day delta: {whole / 1e6:.0f} MB of whole files, {patched} patched 4 KiB blocks")


def check_delta(day1, delta, day2):
    """Proves the delta rebuilds day2 from day1 byte for byte (read-only)."""
    names = files_of(day2)
    with open(os.path.join(delta, "deleted.json")) as f:
        if sorted(set(files_of(day1)) - set(names)) != json.load(f):
            raise SystemExit("day delta: deleted files differ")
    for rel in names:
        whole, patch = os.path.join(delta, "files", rel), os.path.join(delta, "patches", rel + ".patch")
        if os.path.exists(whole):
            ok = filecmp.cmp(whole, os.path.join(day2, rel), shallow=False)
        else:
            recs = {}
            if os.path.exists(patch):
                with open(patch, "rb") as p:
                    while head := p.read(REC.size):
                        off, n = REC.unpack(head)
                        recs[off] = p.read(n)
            with open(os.path.join(day1, rel), "rb") as fo, open(os.path.join(day2, rel), "rb") as fn:
                off, ok = 0, True
                while ok and (b := fn.read(BLOCK)):
                    a = fo.read(BLOCK)
                    ok = recs.get(off, a) == b
                    off += len(b)
                ok = ok and not fo.read(1)
        if not ok:
            raise SystemExit(f"day delta: {rel} does not rebuild")


def apply_delta(delta, work):
    """Turns a copy of day 1 into the day: patches written in place, then
    whole files replaced (copy2, as side_by_side's apply_day), deletions.
    Patches go first so that the file with the newest ctime is a small one:
    borg leaves the newest-ctime file of a backup out of its files cache
    (cmtime granularity), so whichever file was written last is re-read by
    borg's no-change snapshot; a 448 MB chroma.sqlite3 written last would
    charge borg for an artifact of this script's order."""
    root = os.path.join(delta, "patches")
    for rel in files_of(root):
        with open(os.path.join(root, rel), "rb") as p, open(os.path.join(work, rel[:-len(".patch")]), "r+b") as f:
            while head := p.read(REC.size):
                off, n = REC.unpack(head)
                f.seek(off)
                f.write(p.read(n))
    root = os.path.join(delta, "files")
    for rel in files_of(root):
        dst = os.path.join(work, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), dst)
    with open(os.path.join(delta, "deleted.json")) as f:
        for rel in json.load(f):
            os.remove(os.path.join(work, rel))


def tag(gib):
    return f"rt-{gib:g}g"


def ensure_base(a):
    if os.path.exists(a.base):
        return
    if a.base != os.path.join(a.cache, "rt-130000"):
        raise SystemExit(f"--base {a.base} does not exist")
    sh([a.python, os.path.join(SHARED, "make_runtime.py"), "--out", a.base, "--vectors", "130000", "--seed", "1"])


def prepare(a, gib):
    """Builds (or finds) rt-<G>g, its day delta and floors; None when skipped."""
    name = os.path.join(a.cache, tag(gib))
    paths = {"day1": name, "delta": name + ".day", "physics": name + ".physics.json"}
    # A size whose runtime or day was deleted (to free disk) is rebuilt.
    built = all(os.path.isdir(p) for p in (name, name + ".day"))
    if built and os.path.exists(name + ".done"):
        with open(name + ".done") as f:
            built_from = f.read().strip()
        if built_from in ("", a.base):
            return paths
        log(f"{tag(gib)} was grown from {built_from}, not --base {a.base}: rebuilding it")
    ensure_base(a)
    for p in (name, name + ".day", name + ".day2-full"):
        shutil.rmtree(p, ignore_errors=True)
    if os.path.exists(name + ".done"):
        os.remove(name + ".done")
    est = du(a.base) + int(gib * 1.06 * (1 << 30))
    need = 2 * est + int(a.keep_free * 1e9)
    if free_bytes(a.cache) < need:
        log(f"SKIP {gib:g} GiB: preparing needs {need / 1e9:.1f} GB free (2x the ~{est / 1e9:.1f} GB runtime "
            f"+ --keep-free {a.keep_free:g}), {free_bytes(a.cache) / 1e9:.1f} GB free")
        return None
    full = name + ".day2-full"
    sh([a.python, os.path.join(SHARED, "grow_runtime.py"), "--src", a.base, "--out", name, "--gib", f"{gib:g}",
        "--seed", "1"])
    sh(["cp", "-a", name, full])
    sh([a.python, os.path.join(SHARED, "mutate_runtime.py"), "--dir", full, "--fraction", "0.01", "--seed", "2"])
    sh([a.python, os.path.join(SHARED, "mutate_blocks.py"), "--dir", os.path.join(full, "data", "chroma"),
        "--fraction", "0.01", "--seed", "2"])
    with open(paths["physics"] + ".tmp", "w") as f:
        sh(["python3", os.path.join(SHARED, "physics.py"), "--old", name, "--new", full], stdout=f)
    os.replace(paths["physics"] + ".tmp", paths["physics"])
    make_delta(name, full, paths["delta"])
    check_delta(name, paths["delta"], full)
    shutil.rmtree(full)
    with open(name + ".done", "w") as f:
        f.write(a.base + "\n")
    return paths


def trial(tool, paths, scratch, every_command=False):
    r = {}
    base = tempfile.mkdtemp(dir=scratch, prefix=tool.name + "-")
    work, store, dest = (os.path.join(base, d) for d in ("rt", "store", "restored"))
    try:
        shutil.copytree(paths["day1"], work, symlinks=True)
        tool.init(store)
        empty = du(store)
        r["first_s"], r["first_mib"], _ = tool.backup(store, work)
        r["first_size"] = du(store) - empty
        apply_delta(paths["delta"], work)
        time.sleep(3)  # files cache: as side_by_side.py, the day is not from the last instant
        before = du(store)
        r["day_s"], r["day_mib"], snap = tool.backup(store, work)
        r["day_growth"] = du(store) - before
        before = du(store)
        r["nochange_s"], r["nochange_mib"], _ = tool.backup(store, work)
        r["nochange_growth"] = du(store) - before
        r["check_s"], r["check_mib"] = tool.check(store)
        if every_command and tool.name == "atosnap":
            r.update(other_commands(tool, store, work, snap, base))
        shutil.rmtree(work)
        r["restore_s"], r["restore_mib"] = tool.restore(store, snap, dest)
        r["peak_mib"] = max(r[k] for k in r if k.endswith("_mib"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(store + ".cache", ignore_errors=True)
    return r


def other_commands(tool, store, work, snap, base):
    """atosnap's other commands on the trial's store (after its verify):
    wall and peak RSS of each, so "peak memory of every command" is
    measured, not assumed. The in-place restore puts the first snapshot
    back onto the work copy (at the day's state): the previous day."""
    b = [tool.bin, "--quiet", "--store", store]
    stamps = [s["stamp"] for s in json.loads(run(b + ["list"])[2])["snapshots"]]
    first = stamps[0]
    other = os.path.join(base, "other")
    steps = [
        ("validate", b + ["validate", snap]),
        ("diff", b + ["diff", first, snap]),
        ("ls", b + ["ls", snap]),
        ("stats", b + ["stats"]),
        ("gc_dry", b + ["gc"]),
        ("cleanup_dry", b + ["cleanup"]),
        ("drill", b + ["drill", snap]),
        ("inplace", tool.args(store, work) + ["restore", first, "--confirm-service-stopped", "--no-pre-snapshot",
                                              "--chroma"]),
    ]
    r = {}
    for name, cmd in steps:
        r[name + "_s"], r[name + "_mib"], _ = run(cmd)
    subprocess.run([tool.bin, "--store", other, "init"], check=True, stdout=subprocess.DEVNULL)
    r["copy_s"], r["copy_mib"], _ = run(b + ["copy", "--to", other, snap])
    shutil.rmtree(other, ignore_errors=True)
    # A copy into a store of its own key: every chunk read and re-hashed
    # (the off-site set-up docs/security.md recommends), the first snapshot,
    # then the day against it. The key's Argon2id cost is cut to 64 KiB so
    # that the peak is the copy's own (the default cost alone takes 64 MiB
    # while the store opens).
    keyed = dict(ATOSNAP_PASSWORD="bench", ATOSNAP_TO_PASSWORD="bench", ATOSNAP_KDF_PARAMS="m=64,t=1,p=1")
    subprocess.run([tool.bin, "--store", other, "init", "--encryption", "repokey"], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, **keyed))
    keyed.pop("ATOSNAP_PASSWORD")
    r["rekey_first_s"], r["rekey_first_mib"], _ = run(b + ["copy", "--to", other, first], env=keyed)
    r["rekey_day_s"], r["rekey_day_mib"], _ = run(b + ["copy", "--to", other, snap], env=keyed)
    shutil.rmtree(other, ignore_errors=True)
    return r


def measure(a, gib, paths, tools):
    runtime = du(paths["day1"])
    need = int((3.2 if a.every_command else 2.2) * runtime + a.keep_free * 1e9)
    if free_bytes(a.scratch) < need:
        log(f"SKIP measuring {gib:g} GiB: needs {need / 1e9:.1f} GB free in {a.scratch} (2.2x the "
            f"{runtime / 1e9:.1f} GB runtime + --keep-free {a.keep_free:g}), {free_bytes(a.scratch) / 1e9:.1f} GB free")
        return None
    with open(paths["physics"]) as f:
        floors = json.load(f)
    res = {}
    for t in range(a.trials):
        for name in a.tools.split(","):
            log(f"{gib:g} GiB, trial {t + 1}/{a.trials}: {name}")
            r = trial(tools[name], paths, a.scratch, a.every_command)
            log("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
            for k, v in r.items():
                res.setdefault(name, {}).setdefault(k, []).append(v)
    return {"gib": gib, "runtime_bytes": runtime, "floors": floors,
            "medians": {n: {k: statistics.median(v) for k, v in rs.items()} for n, rs in res.items()},
            "all": res}


def fit(xs, ys):
    """Least squares y = a + b x: (a, b, r2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss = sum((y - my) ** 2 for y in ys)
    r2 = 1 - sum((y - a - b * x) ** 2 for x, y in zip(xs, ys)) / ss if ss else 1.0
    return a, b, r2


EXTRA = [("nochange_growth", "store growth per no-change snapshot", 1, "MB"),
         ("day_growth", "store growth per 1 % day", 1, "MB"), ("peak_mib", "peak memory", 1, "MiB"),
         ("nochange_s", "no-change snapshot, wall", 1, "s")]


def extrapolate(sizes, at_gb):
    out = {}
    for name in sorted({n for s in sizes for n in s["medians"]}):
        pts = [(s["runtime_bytes"] / 1e9, s["medians"][name]) for s in sizes if name in s["medians"]]
        if len(pts) < 2:
            continue
        xs = [x for x, _ in pts]
        for key, *_ in EXTRA:
            a, b, r2 = fit(xs, [m[key] for _, m in pts])
            out.setdefault(name, {})[key] = {"a": a, "b_per_gb": b, "r2": r2, "at": a + b * at_gb, "points": len(xs)}
    return out


ROWS = [("first snapshot, wall (s)", "first_s", "s"), ("store after first (MB)", "first_size", "MB"),
        ("  × first floor", "first_size/first_zstd3_bytes", "x"), ("1 % day, wall (s)", "day_s", "s"),
        ("store growth, day (MB)", "day_growth", "MB"), ("  × day floor", "day_growth/day_zstd3_bytes", "x"),
        ("no-change, wall (s)", "nochange_s", "s"), ("store growth, no-change (KiB)", "nochange_growth", "KiB"),
        ("verify reading all data (s)", "check_s", "s"), ("full restore into empty dir (s)", "restore_s", "s"),
        ("peak RSS first / day / no-change (MiB)", "first_mib day_mib nochange_mib", "mib3"),
        ("peak RSS verify / restore (MiB)", "check_mib restore_mib", "mib2"), ("peak memory (MiB)", "peak_mib", "s")]
# With --every-command (atosnap only): wall (s) / peak RSS (MiB) of each.
OTHER = ["validate", "diff", "ls", "stats", "gc_dry", "cleanup_dry", "drill", "inplace", "copy", "rekey_first",
         "rekey_day"]


def cell(m, floors, key, unit):
    if unit == "x":
        num, den = key.split("/")
        return f"{m[num] / floors[den]:.3f}" if floors.get(den) and num in m else ""
    if unit.startswith("mib"):
        return " / ".join(f"{m[k]:.0f}" for k in key.split())
    v = m.get(key)
    if v is None:
        return ""
    return {"MB": f"{v / 1e6:,.1f}", "KiB": f"{v / 1024:,.1f}"}.get(unit, f"{v:.2f}")


def human(n):
    """Bytes in the unit that keeps 3 significant digits readable."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def markdown(sizes, skipped, extra, at_gb):
    out = []
    for name in sorted({n for s in sizes for n in s["medians"]}):
        cols = [s for s in sizes if name in s["medians"]]
        out.append(f"**{name}**\n")
        heads = (f"{s['gib']:g} GiB ({s['runtime_bytes'] / 1e9:.2f} GB)" for s in cols)
        out.append("| measure | " + " | ".join(heads) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for label, key, unit in ROWS:
            cells = (cell(s["medians"][name], s["floors"], key, unit) for s in cols)
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        for cmd in OTHER:
            ms = [s["medians"][name] for s in cols]
            if any(cmd + "_s" in m for m in ms):
                cells = (f"{m[cmd + '_s']:.2f} s / {m[cmd + '_mib']:.0f} MiB" if cmd + "_s" in m else "" for m in ms)
                out.append(f"| {cmd.replace('_', ' ')}: wall / peak RSS | " + " | ".join(cells) + " |")
        out.append("")
    if sizes:
        floors = (f"{s['gib']:g} GiB first {s['floors']['first_zstd3_bytes'] / 1e6:,.1f} MB, "
                  f"day {s['floors']['day_zstd3_bytes'] / 1e6:,.1f} MB" for s in sizes)
        out.append("Floors (physics.py): " + "; ".join(floors) + "\n")
    if extra:
        out.append(f"Extrapolation to {at_gb:g} GB of runtime: least squares y = a + b·x through the sizes "
                   f"(x = runtime GB; b per GB in parentheses, r² when 3 or more sizes), value at x = {at_gb:g}\n")
        out.append("| tool | " + " | ".join(label for _, label, _, _ in EXTRA) + " | 24 hourly no-change snapshots |")
        out.append("|---|" + "---:|" * (len(EXTRA) + 1))
        for name, fits in extra.items():
            cells = []
            for key, _, scale, unit in EXTRA:
                f = fits[key]
                r2 = f", r² {f['r2']:.3f}" if f["points"] >= 3 else ""
                if unit == "MB":
                    cells.append(f"{human(f['at'])} (a {human(f['a'])}, b {human(f['b_per_gb'])}{r2})")
                else:
                    cells.append(f"{f['at']:,.1f} {unit} (a {f['a']:,.2f}, b {f['b_per_gb']:,.3f}{r2})")
            cells.append(human(24 * fits["nochange_growth"]["at"]))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    for s in skipped:
        out.append(f"- skipped: {s}")
    return "\n".join(out)


def main():
    cache_default = os.path.expanduser("~/.cache/atosnap-bench")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atosnap", default=os.path.join(HERE, "..", "target", "release", "atosnap"))
    ap.add_argument("--gib", default="1,2,4,8", help="GiB of HNSW data grown onto the base runtime, comma-separated")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--tools", default="atosnap,restic,borg-lz4")
    ap.add_argument("--cache", default=cache_default, help="cached runtimes, days and floors")
    ap.add_argument("--base", default=None, help="runtime to grow (default CACHE/rt-130000)")
    ap.add_argument("--venv", default=None, help="venv with numpy and chromadb (default CACHE/venv)")
    ap.add_argument("--scratch", default=None, help="work copies, stores and restores (default a temp dir in CACHE)")
    ap.add_argument("--keep-free", type=float, default=5.0, help="GB to leave free on disk (default 5)")
    ap.add_argument("--extrapolate-gb", type=float, default=50.0)
    ap.add_argument("--prepare-only", action="store_true", help="build the cached runtimes and stop")
    ap.add_argument("--every-command", action="store_true",
                    help="also time atosnap's validate, diff, ls, stats, gc, cleanup, drill, in-place restore "
                         "and copy on its store (wall and peak RSS of each; needs a store's size more disk)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    a = ap.parse_args()
    a.cache = os.path.abspath(a.cache)
    a.base = os.path.abspath(a.base or os.path.join(a.cache, "rt-130000"))
    venv = a.venv or os.path.join(a.cache, "venv")
    a.python = os.path.join(venv, "bin", "python")
    os.makedirs(a.cache, exist_ok=True)
    if not os.path.exists(a.python):
        sh(["python3", "-m", "venv", venv])
        sh([os.path.join(venv, "bin", "pip"), "install", "-q", "chromadb", "numpy"])
    for t in ("zstd", "/usr/bin/time") + (("restic",) if "restic" in a.tools else ()) + (
            ("borg",) if "borg" in a.tools else ()):
        if not shutil.which(t):
            raise SystemExit(f"missing {t}: apt-get install zstd time restic borgbackup")
    atosnap = os.path.abspath(a.atosnap)
    if "atosnap" in a.tools and not a.prepare_only and not os.access(atosnap, os.X_OK):
        raise SystemExit(f"no atosnap binary at {atosnap} (--atosnap)")
    unknown = set(a.tools.split(",")) - {"atosnap", "restic", "borg-lz4", "borg-zstd3"}
    if unknown:
        raise SystemExit(f"unknown --tools {','.join(sorted(unknown))} (atosnap, restic, borg-lz4, borg-zstd3)")
    made_scratch = a.scratch is None
    a.scratch = os.path.abspath(a.scratch or tempfile.mkdtemp(dir=a.cache, prefix="scale-"))
    os.makedirs(a.scratch, exist_ok=True)
    pw = os.path.join(a.scratch, "pw")
    with open(pw, "w") as f:
        f.write("bench\n")
    tools = {"atosnap": Atosnap(atosnap), "restic": Restic(pw), "borg-lz4": Borg("lz4"), "borg-zstd3": Borg("zstd,3")}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "load_before": os.getloadavg(), "tools": a.tools, "trials": a.trials}
    for key, cmd in (("atosnap", [atosnap, "--version"]), ("restic", ["restic", "version"]),
                     ("borg", ["borg", "--version"])):
        try:
            meta[key] = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    sizes, skipped = [], []
    try:
        for gib in (float(g) for g in a.gib.split(",")):
            paths = prepare(a, gib)
            if paths is None:
                skipped.append(f"{gib:g} GiB: not enough disk to prepare it")
                continue
            log(f"{gib:g} GiB ready: {du(paths['day1']) / 1e9:.2f} GB runtime, day delta "
                f"{du(paths['delta']) / 1e9:.2f} GB; {free_bytes(a.cache) / 1e9:.1f} GB free")
            if a.prepare_only:
                continue
            s = measure(a, gib, paths, tools)
            if s is None:
                skipped.append(f"{gib:g} GiB: not enough disk to measure it")
                continue
            sizes.append(s)
    finally:
        if made_scratch:
            shutil.rmtree(a.scratch, ignore_errors=True)
    if a.prepare_only:
        return
    meta["load_after"] = os.getloadavg()
    extra = extrapolate(sizes, a.extrapolate_gb)
    md = markdown(sizes, skipped, extra, a.extrapolate_gb)
    doc = {"meta": meta, "sizes": sizes, "skipped": skipped, "extrapolate_gb": a.extrapolate_gb,
           "extrapolation": extra}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
