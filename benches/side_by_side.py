#!/usr/bin/env python3
"""atosnap vs restic vs borg on a realistic AtoCore runtime, every row of
SPEC §5, in one run. Run through benches/side_by_side.sh, which installs the
tools and builds atosnap.

A trial is a whole day on fresh copies, for every tool in turn:
  1. copy the day-1 runtime to a work dir (new inodes: a cold files cache);
  2. first snapshot                          (timed, store size, peak RSS)
  3. apply day 2: only files that differ are rewritten (unchanged files keep
     their inode and ctime, as on a live host), then wait 3 s
  4. 1 % day snapshot                        (timed, store growth)
  5. no-change snapshot                      (timed)
  6. verify reading all data                 (timed, peak RSS)
  7. full restore into an empty dir          (timed, peak RSS)
  8. atosnap only: in-place restore of day 1 over the restored day 2 (timed)
Tools: atosnap, atosnap-repokey (an encrypted store, default key cost),
restic, borg-lz4, borg-zstd3.
Medians of --trials (default 3) are printed as a table with the ratios the
targets are stated in.
"""
import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BORG_ENV = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}


def run(cmd, env=None, cwd=None):
    """Runs cmd under /usr/bin/time; returns (seconds, peak RSS MiB, stdout)."""
    full_env = dict(os.environ, **(env or {}))
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, env=full_env, cwd=cwd,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if p.returncode not in (0,):
        sys.stderr.write(p.stderr[-2000:])
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    rss_kib = int(p.stderr.strip().splitlines()[-1])
    return dt, rss_kib / 1024, p.stdout


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def drop_caches_hint():
    # Warm page cache for every tool alike: read the runtime once.
    pass


def apply_day(day2, work):
    """Rewrites only the files of `work` that differ from `day2`."""
    for root, dirs, files in os.walk(day2):
        rel = os.path.relpath(root, day2)
        dest_dir = os.path.join(work, rel)
        os.makedirs(dest_dir, exist_ok=True)
        for f in files:
            src, dst = os.path.join(root, f), os.path.join(dest_dir, f)
            if not os.path.exists(dst) or not filecmp.cmp(src, dst, shallow=False):
                shutil.copy2(src, dst)
    for root, dirs, files in os.walk(work, topdown=False):
        rel = os.path.relpath(root, work)
        for f in files:
            if not os.path.exists(os.path.join(day2, rel, f)):
                os.remove(os.path.join(root, f))


class Atosnap:
    name = "atosnap"

    def __init__(self, binary):
        self.bin = binary

    def args(self, store, work):
        return [self.bin, "--quiet", "--store", store, "--db", f"{work}/data/atocore.db",
                "--registry", f"{work}/config/project-registry.json", "--chroma-dir", f"{work}/data/chroma"]

    def init(self, store):
        subprocess.run([self.bin, "--store", store, "init"], check=True, stdout=subprocess.DEVNULL)

    def backup(self, store, work):
        dt, rss, out = run(self.args(store, work) + ["create", "--chroma"])
        return dt, rss, json.loads(out)["stamp"]

    def check(self, store):
        return run([self.bin, "--quiet", "--store", store, "verify"])[:2]

    def restore(self, store, snap, dest):
        return run([self.bin, "--quiet", "--store", store, "restore", snap, "--to", dest])[:2]


class AtosnapRepokey(Atosnap):
    """atosnap on an encrypted store (`init --encryption repokey`), with the
    default key cost: every command derives the key from the password, as
    restic's does. The rows compare with restic, which always encrypts."""
    name = "atosnap-repokey"

    def __init__(self, binary, password_file):
        super().__init__(binary)
        self.pw = password_file

    def args(self, store, work):
        return super().args(store, work) + ["--password-file", self.pw]

    def init(self, store):
        subprocess.run([self.bin, "--store", store, "--password-file", self.pw, "init",
                        "--encryption", "repokey"], check=True, stdout=subprocess.DEVNULL)

    def check(self, store):
        return run([self.bin, "--quiet", "--store", store, "--password-file", self.pw, "verify"])[:2]

    def restore(self, store, snap, dest):
        return run([self.bin, "--quiet", "--store", store, "--password-file", self.pw, "restore",
                    snap, "--to", dest])[:2]


class Restic:
    name = "restic"

    def __init__(self, pwfile):
        self.env = {"RESTIC_PASSWORD_FILE": pwfile, "RESTIC_CACHE_DIR": ""}

    def init(self, store):
        self.env["RESTIC_CACHE_DIR"] = store + ".cache"
        subprocess.run(["restic", "-r", store, "init"], env=dict(os.environ, **self.env), check=True,
                       stdout=subprocess.DEVNULL)

    def backup(self, store, work):
        dt, rss, _ = run(["restic", "-r", store, "backup", "-q", "--host", "bench", work], env=self.env)
        return dt, rss, "latest"

    def check(self, store):
        return run(["restic", "-r", store, "check", "--read-data", "-q"], env=self.env)[:2]

    def restore(self, store, snap, dest):
        return run(["restic", "-r", store, "restore", snap, "--target", dest, "-q"], env=self.env)[:2]


class Borg:
    def __init__(self, compression):
        self.compression = compression
        self.name = f"borg-{compression.replace(',', '')}"
        self.n = 0

    def init(self, store):
        subprocess.run(["borg", "init", "-e", "none", store], env=dict(os.environ, **BORG_ENV), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def backup(self, store, work):
        self.n += 1
        name = f"a{self.n}"
        dt, rss, _ = run(["borg", "create", "--compression", self.compression, f"{store}::{name}", "."],
                         env=BORG_ENV, cwd=work)
        return dt, rss, name

    def check(self, store):
        return run(["borg", "check", "--verify-data", store], env=BORG_ENV)[:2]

    def restore(self, store, snap, dest):
        os.makedirs(dest, exist_ok=True)
        return run(["borg", "extract", f"{store}::{snap}"], env=BORG_ENV, cwd=dest)[:2]


def trial(tool, day1, day2, scratch):
    r = {}
    base = tempfile.mkdtemp(dir=scratch, prefix=tool.name + "-")
    work, store = os.path.join(base, "rt"), os.path.join(base, "store")
    shutil.copytree(day1, work, symlinks=True)
    tool.init(store)
    empty = du(store)
    r["first_s"], rss1, snap1 = tool.backup(store, work)
    r["first_size"] = du(store) - empty
    apply_day(day2, work)
    # As on a live host, the day's writes are not from the last instant:
    # every tool's files cache distrusts files modified a moment ago
    # (atosnap: within 2 s), which would turn the no-change run into a
    # re-read of the day's files.
    time.sleep(3)
    before = du(store)
    r["day_s"], rss2, snap2 = tool.backup(store, work)
    r["day_growth"] = du(store) - before
    r["nochange_s"], rss3, _ = tool.backup(store, work)
    r["check_s"], rss4 = tool.check(store)
    dest = os.path.join(base, "restored")
    r["restore_s"], rss5 = tool.restore(store, snap2, dest)
    r["peak_mib"] = max(rss1, rss2, rss3, rss4, rss5)
    if tool.name.startswith("atosnap"):
        # Previous day, in place over the day-2 restore.
        r["inplace_s"], rss6 = tool.restore(store, snap1, dest)
        r["peak_mib"] = max(r["peak_mib"], rss6)
    shutil.rmtree(base, ignore_errors=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--day1", required=True)
    ap.add_argument("--day2", required=True)
    ap.add_argument("--atosnap", required=True)
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--tools", default="atosnap,restic,borg-lz4,borg-zstd3")
    ap.add_argument("--json", default=None, help="write the medians here")
    a = ap.parse_args()
    scratch = a.scratch or tempfile.mkdtemp(prefix="atosnap-bench-")
    pw = os.path.join(scratch, "pw")
    with open(pw, "w") as f:
        f.write("bench\n")
    tools = {"atosnap": Atosnap(a.atosnap), "atosnap-repokey": AtosnapRepokey(a.atosnap, pw), "restic": Restic(pw), "borg-lz4": Borg("lz4"),
             "borg-zstd3": Borg("zstd,3")}
    results = {}
    for t in range(a.trials):
        for name in a.tools.split(","):
            print(f"trial {t + 1}/{a.trials}: {name}", file=sys.stderr, flush=True)
            r = trial(tools[name], a.day1, a.day2, scratch)
            for k, v in r.items():
                results.setdefault(name, {}).setdefault(k, []).append(v)
    med = {n: {k: statistics.median(v) for k, v in rs.items()} for n, rs in results.items()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"medians": med, "all": results}, f, indent=2)

    rows = [("first snapshot, wall (s)", "first_s"), ("store size after first (MB)", "first_size"),
            ("1 % day snapshot, wall (s)", "day_s"), ("store growth, 1 % day (MB)", "day_growth"),
            ("no-change snapshot, wall (s)", "nochange_s"), ("verify reading all data (s)", "check_s"),
            ("full restore into empty dir (s)", "restore_s"), ("in-place restore of previous day (s)", "inplace_s"),
            ("peak memory (MiB)", "peak_mib")]
    names = list(med)
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, key in rows:
        cells = []
        for n in names:
            v = med[n].get(key)
            if v is None:
                cells.append("")
            elif key.endswith("size") or key.endswith("growth"):
                cells.append(f"{v / 1e6:.0f}")
            else:
                cells.append(f"{v:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")

    m = med.get("atosnap", {})
    def ratio(key, other):
        o = med.get(other, {}).get(key)
        return None if not o or key not in m else m[key] / o
    print("\nratios (atosnap / other), with the SPEC §5 target:")
    checks = [("day_growth", "restic", 0.25), ("first_size", "restic", 1.0), ("first_s", "borg-lz4", 0.5),
              ("day_s", "borg-lz4", 0.3), ("nochange_s", "borg-lz4", 2.0), ("nochange_s", "restic", 0.5),
              ("check_s", "restic", 0.3), ("restore_s", "borg-lz4", 0.6)]
    for key, other, target in checks:
        r = ratio(key, other)
        if r is not None:
            print(f"  {key:<12} vs {other:<10} {r:6.2f}x  target <= {target}x  {'met' if r <= target else 'MISSED'}")
    if "inplace_s" in m and "restore_s" in m:
        r = m["inplace_s"] / m["restore_s"]
        print(f"  in-place / full restore   {r:6.2f}x  target <= 0.5x  {'met' if r <= 0.5 else 'MISSED'}")
    for name in names:
        peak = med[name].get("peak_mib")
        if name.startswith("atosnap") and peak is not None:
            print(f"  peak memory ({name}) {peak:.0f} MiB  target <= 64 MiB  {'met' if peak <= 64 else 'MISSED'}")


if __name__ == "__main__":
    main()
