#!/usr/bin/env python3
"""atosnap vs restic to an S3 bucket (a local Garage), the off-host rows.
Run through benches/s3_side_by_side.sh, which starts Garage, creates the
bench bucket and builds atosnap.

A trial, on fresh copies of the day-1 runtime for each part:
  atosnap, direct to the bucket (s3://BUCKET/RUN/tN/direct, fresh cache dir):
    init; first snapshot (timed, bytes uploaded, peak RSS); apply day 2,
    wait 3 s; 1 % day snapshot (timed, bytes uploaded); full restore of the
    day from the bucket into an empty dir with an EMPTY cache dir (a new
    host; timed, peak RSS).
  restic, to s3:ENDPOINT/BUCKET/RUN/tN/restic: the same, `restore latest`
    with an empty RESTIC_CACHE_DIR.
  copy: a local atosnap store takes day 1 and copies it to
    s3://BUCKET/RUN/tN/copy; takes day 2 locally (chunks_new,
    bytes_new_stored, local store growth); `copy --to` the bucket again
    (timed, chunks_sent, bytes_sent, bucket growth).
Bytes uploaded = growth of the summed object sizes under the tool's prefix
(an S3 listing): what stays in the bucket. Each trial's prefixes are
deleted at its end. Medians of --trials (default 3).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from side_by_side import apply_day, du, run  # noqa: E402

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402


class Bucket:
    def __init__(self, endpoint, name):
        self.name = name
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "garage"),
                               config=Config(s3={"addressing_style": "path"}))

    def usage(self, prefix):
        """(total bytes, object count) under prefix/."""
        total = n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                total += o["Size"]
                n += 1
        return total, n

    def bytes(self, prefix):
        return self.usage(prefix)[0]

    def delete(self, prefix):
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix + "/"):
            keys += [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.name, Delete={"Objects": keys[i:i + 1000], "Quiet": True})


def fresh_copy(day1, base, name):
    work = os.path.join(base, name)
    shutil.copytree(day1, work, symlinks=True)
    return work


class Atosnap:
    def __init__(self, binary, endpoint):
        self.bin, self.endpoint = binary, endpoint

    def base(self, store, cache):
        return [self.bin, "--quiet", "--store", store, "--s3-endpoint", self.endpoint, "--cache-dir", cache]

    def src(self, work):
        return ["--db", f"{work}/data/atocore.db", "--registry", f"{work}/config/project-registry.json",
                "--chroma-dir", f"{work}/data/chroma"]

    def init(self, store, cache):
        subprocess.run(self.base(store, cache) + ["init"], check=True, stdout=subprocess.DEVNULL)

    def create(self, store, cache, work):
        dt, rss, out = run(self.base(store, cache) + self.src(work) + ["create", "--chroma"])
        return dt, rss, json.loads(out)

    def restore(self, store, cache, stamp, dest):
        return run(self.base(store, cache) + ["restore", stamp, "--to", dest])[:2]

    def copy(self, local, to, cache):
        dt, rss, out = run(self.base(local, cache) + ["copy", "--to", to])
        return dt, rss, json.loads(out)


def trial_atosnap(a, bucket, prefix, day1, day2, base):
    r = {}
    work = fresh_copy(day1, base, "rt-atosnap")
    store = f"s3://{bucket.name}/{prefix}"
    cache = os.path.join(base, "cache-atosnap")
    a.init(store, cache)
    b0 = bucket.bytes(prefix)
    r["first_s"], rss1, _ = a.create(store, cache, work)
    b1 = bucket.bytes(prefix)
    r["first_up"] = b1 - b0
    apply_day(day2, work)
    time.sleep(3)
    r["day_s"], rss2, res = a.create(store, cache, work)
    r["day_up"] = bucket.bytes(prefix) - b1
    r["day_chunks_new"] = res["chunks_new"]
    r["day_bytes_new_stored"] = res["bytes_new_stored"]
    r["create_peak_mib"] = max(rss1, rss2)
    shutil.rmtree(work)
    dest = os.path.join(base, "restored-atosnap")
    r["restore_s"], r["restore_peak_mib"] = a.restore(store, os.path.join(base, "cache-newhost"), res["stamp"], dest)
    shutil.rmtree(dest)
    return r


def trial_restic(env, bucket, endpoint, prefix, day1, day2, base):
    r = {}
    work = fresh_copy(day1, base, "rt-restic")
    repo = f"s3:{endpoint}/{bucket.name}/{prefix}"
    env = dict(env, RESTIC_CACHE_DIR=os.path.join(base, "cache-restic"))
    subprocess.run(["restic", "-r", repo, "init"], env=dict(os.environ, **env), check=True,
                   stdout=subprocess.DEVNULL)
    b0 = bucket.bytes(prefix)
    r["first_s"], rss1, _ = run(["restic", "-r", repo, "backup", "-q", "--host", "bench", work], env=env)
    b1 = bucket.bytes(prefix)
    r["first_up"] = b1 - b0
    apply_day(day2, work)
    time.sleep(3)
    r["day_s"], rss2, _ = run(["restic", "-r", repo, "backup", "-q", "--host", "bench", work], env=env)
    r["day_up"] = bucket.bytes(prefix) - b1
    r["create_peak_mib"] = max(rss1, rss2)
    shutil.rmtree(work)
    dest = os.path.join(base, "restored-restic")
    env_new = dict(env, RESTIC_CACHE_DIR=os.path.join(base, "cache-restic-newhost"))
    r["restore_s"], r["restore_peak_mib"] = run(
        ["restic", "-r", repo, "restore", "latest", "--target", dest, "-q"], env=env_new)[:2]
    shutil.rmtree(dest)
    return r


def trial_copy(a, bucket, prefix, day1, day2, base):
    r = {}
    work = fresh_copy(day1, base, "rt-copy")
    local = os.path.join(base, "local-store")
    cache = os.path.join(base, "cache-copy")
    to = f"s3://{bucket.name}/{prefix}"
    a.create(local, cache, work)
    r["copy_first_s"], rss1, res1 = a.copy(local, to, cache)
    r["copy_first_up"] = bucket.bytes(prefix)
    apply_day(day2, work)
    time.sleep(3)
    l0 = du(local)
    _, _, day = a.create(local, cache, work)
    r["local_day_growth"] = du(local) - l0
    r["local_chunks_new"] = day["chunks_new"]
    r["local_bytes_new_stored"] = day["bytes_new_stored"]
    b0 = bucket.bytes(prefix)
    r["copy_day_s"], rss2, res = a.copy(local, to, cache)
    r["copy_day_up"] = bucket.bytes(prefix) - b0
    r["copy_chunks_sent"] = res["chunks_sent"]
    r["copy_bytes_sent"] = res["bytes_sent"]
    r["copy_peak_mib"] = max(rss1, rss2)
    if res["snapshots_copied"] != [day["stamp"]]:
        raise SystemExit(f"copy published {res['snapshots_copied']}, expected [{day['stamp']}]")
    shutil.rmtree(work)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--day1", required=True)
    ap.add_argument("--day2", required=True)
    ap.add_argument("--atosnap", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--endpoint", default=os.environ.get("ATOSNAP_S3_ENDPOINT"))
    ap.add_argument("--scratch", default=None)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--parts", default="atosnap,restic,copy")
    ap.add_argument("--keep", action="store_true", help="keep the bucket prefixes")
    ap.add_argument("--json", default=None, help="write the medians here")
    a = ap.parse_args()
    scratch = a.scratch or tempfile.mkdtemp(prefix="atosnap-s3-bench-")
    os.makedirs(scratch, exist_ok=True)
    pw = os.path.join(scratch, "pw")
    with open(pw, "w") as f:
        f.write("bench\n")
    restic_env = {"RESTIC_PASSWORD_FILE": pw}
    bucket = Bucket(a.endpoint, a.bucket)
    tool = Atosnap(a.atosnap, a.endpoint)
    run_id = time.strftime("run-%Y%m%dT%H%M%S")
    parts = a.parts.split(",")
    results = {}
    for t in range(a.trials):
        base = tempfile.mkdtemp(dir=scratch, prefix=f"s3-t{t + 1}-")
        pre = f"{run_id}/t{t + 1}"
        try:
            for part in parts:
                print(f"trial {t + 1}/{a.trials}: {part}", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                if part == "atosnap":
                    r = trial_atosnap(tool, bucket, pre + "/direct", a.day1, a.day2, base)
                elif part == "restic":
                    r = trial_restic(restic_env, bucket, a.endpoint, pre + "/restic", a.day1, a.day2, base)
                elif part == "copy":
                    r = trial_copy(tool, bucket, pre + "/copy", a.day1, a.day2, base)
                else:
                    raise SystemExit(f"unknown part {part}")
                print(f"  {part}: {json.dumps({k: round(v, 2) for k, v in r.items()})} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
                name = "restic" if part == "restic" else "atosnap"
                for k, v in r.items():
                    results.setdefault(name, {}).setdefault(k, []).append(v)
        finally:
            shutil.rmtree(base, ignore_errors=True)
            if not a.keep:
                for sub in ("direct", "restic", "copy"):
                    bucket.delete(f"{pre}/{sub}")
    med = {n: {k: statistics.median(v) for k, v in rs.items()} for n, rs in results.items()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"trials": a.trials, "medians": med, "all": results}, f, indent=2)
    report(med, a.trials)


def report(med, trials):
    A, R = med.get("atosnap", {}), med.get("restic", {})
    mb = lambda v: f"{v / 1e6:.1f}"  # noqa: E731
    s = lambda v: f"{v:.2f}"  # noqa: E731
    mib = lambda v: f"{v:.0f}"  # noqa: E731
    rows = [("first snapshot to the bucket, wall (s)", "first_s", s, None),
            ("bytes uploaded, first snapshot (MB)", "first_up", mb, None),
            ("1 % day snapshot to the bucket, wall (s)", "day_s", s, 0.5),
            ("bytes uploaded, 1 % day (MB)", "day_up", mb, 0.25),
            ("full restore from the bucket, empty cache (s)", "restore_s", s, None),
            ("peak memory, snapshots (MiB)", "create_peak_mib", mib, None),
            ("peak memory, restore (MiB)", "restore_peak_mib", mib, None)]
    print(f"medians of {trials} trial(s)\n")
    print("| measure | atosnap | restic | ratio | target | met? |")
    print("|---|---:|---:|---:|---|---|")
    for label, key, fmt, target in rows:
        av, rv = A.get(key), R.get(key)
        ratio = f"{av / rv:.2f}x" if av is not None and rv else ""
        tgt = met = ""
        if target is not None:
            tgt = f"<= {target}x"
            if av is not None and rv:
                met = "met" if av / rv <= target else "MISSED"
        print(f"| {label} | {fmt(av) if av is not None else ''} | {fmt(rv) if rv is not None else ''} "
              f"| {ratio} | {tgt} | {met} |")
    if "copy_day_up" in A:
        print("\ncopy of the day's snapshot from a local store to the bucket (atosnap copy --to):\n")
        print("| measure | value |")
        print("|---|---:|")
        print(f"| copy of day 1 (whole store), wall (s) | {s(A['copy_first_s'])} |")
        print(f"| copy of day 1, bytes uploaded (MB) | {mb(A['copy_first_up'])} |")
        print(f"| day 2 taken locally: chunks_new | {A['local_chunks_new']:.0f} |")
        print(f"| day 2 taken locally: bytes_new_stored (MB) | {mb(A['local_bytes_new_stored'])} |")
        print(f"| day 2 taken locally: local store growth incl. manifest/index (MB) | {mb(A['local_day_growth'])} |")
        print(f"| copy of day 2, wall (s) | {s(A['copy_day_s'])} |")
        print(f"| copy of day 2: chunks_sent | {A['copy_chunks_sent']:.0f} |")
        print(f"| copy of day 2: bytes_sent (MB) | {mb(A['copy_bytes_sent'])} |")
        print(f"| copy of day 2: bucket growth (MB) | {mb(A['copy_day_up'])} |")
        print(f"| peak memory, copy (MiB) | {mib(A['copy_peak_mib'])} |")
        ok_chunks = A["copy_chunks_sent"] <= A["local_chunks_new"]
        ok_bytes = A["copy_day_up"] <= A["local_day_growth"]
        print(f"\ncopy target (uploads no more than the day's new chunks):"
              f" chunks_sent {A['copy_chunks_sent']:.0f} <= chunks_new {A['local_chunks_new']:.0f}:"
              f" {'met' if ok_chunks else 'MISSED'};"
              f" bucket growth {mb(A['copy_day_up'])} MB <= local day growth {mb(A['local_day_growth'])} MB"
              f" ({A['copy_day_up'] / A['local_day_growth']:.2f}x): {'met' if ok_bytes else 'MISSED'}")


if __name__ == "__main__":
    main()
