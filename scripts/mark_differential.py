#!/usr/bin/env python3
# Differential check for issue 15 step 8 (the mark sorted on disk): builds a
# small store (5 snapshots, leaves of 4 ids so trees have delta leaves, a
# deleted snapshot leaving an orphan pack and partly live frames), then runs
# verify (whole, --snapshot, --subset), gc (dry), stats (with and without
# --per-snapshot) and validate on two copies of it, one with OLD (a binary
# built before the change) and one with NEW, healthy, after a flipped byte
# and after a lost pack; their JSON must be equal (durations, log names and
# the store path aside). Usage: mark_differential.py OLD NEW WORKDIR [single]
# ("single": frames of one chunk). Exit 1 on any difference.
import json, os, random, shutil, sqlite3, subprocess, sys

OLD, NEW = sys.argv[1], sys.argv[2]
base = sys.argv[3]
single = len(sys.argv) > 4 and sys.argv[4] == "single"
shutil.rmtree(base, ignore_errors=True)
rt = os.path.join(base, "rt"); os.makedirs(os.path.join(rt, "chroma", "seg"))
os.makedirs(os.path.join(rt, "config"))
db = os.path.join(rt, "atocore.db")
con = sqlite3.connect(db); con.execute("CREATE TABLE memories(id INTEGER PRIMARY KEY, content TEXT)")
for i in range(3000): con.execute("INSERT INTO memories(content) VALUES (?)", ("memory %d " % i + "x" * 200,))
con.commit(); con.close()
open(os.path.join(rt, "config", "project-registry.json"), "w").write('{"projects": []}')
rnd = random.Random(1)
def rb(n): return bytes(rnd.getrandbits(8) for _ in range(n))
open(os.path.join(rt, "chroma", "seg", "data_level0.bin"), "wb").write(rb(400_000))
open(os.path.join(rt, "chroma", "seg", "header.bin"), "wb").write(rb(5000))
env = dict(os.environ, ATOCORE_DB_PATH=db, ATOCORE_CHROMA_PATH=os.path.join(rt, "chroma"),
           ATOCORE_PROJECT_REGISTRY_PATH=os.path.join(rt, "config", "project-registry.json"),
           ATOSNAP_CACHE_DIR=os.path.join(base, "cache"))
store = os.path.join(base, "store")
def run(binary, st, *args):
    p = subprocess.run([binary, "--quiet", "--store", st, *args], env=env, capture_output=True, text=True)
    try: j = json.loads(p.stdout)
    except Exception: j = {"stdout": p.stdout, "stderr": p.stderr}
    if isinstance(j, dict):
        for k in ("duration_ms", "recorded", "store", "store_bytes"): j.pop(k, None)
    return p.returncode, j
assert run(OLD, store, "init")[0] == 0
cfg = json.load(open(os.path.join(store, "config.json")))
cfg["lists"]["leaf_slots"] = 4; cfg["lists"]["max_chain"] = 8
if single: cfg["frames"]["max_chunks"] = 1
json.dump(cfg, open(os.path.join(store, "config.json"), "w"))
def change(r):
    con = sqlite3.connect(db); con.execute("UPDATE memories SET content = content || ? WHERE id % 37 = 0", (" e%d" % r,)); con.commit(); con.close()
    f = os.path.join(rt, "chroma", "seg", "data_level0.bin"); b = bytearray(open(f, "rb").read())
    for k in range(5): 
        o = rnd.randrange(len(b) - 4096); b[o:o + 4096] = rb(4096)
    open(f, "wb").write(b)
stamps = []
for i in range(5):
    if i == 2: open(os.path.join(rt, "chroma", "junk.bin"), "wb").write(rb(300_000))
    if i == 3: os.remove(os.path.join(rt, "chroma", "junk.bin"))
    c, j = run(OLD, store, "create", "--chroma", "--at", "2026-04-0%dT12:00:00Z" % (i + 1))
    assert c == 0, j
    stamps.append(j["stamp"]); change(i)
shutil.rmtree(os.path.join(store, "snapshots", stamps[2])); shutil.rmtree(os.path.join(store, "snapshots", stamps[0]))
live = [s for k, s in enumerate(stamps) if k not in (0, 2)]
def packs(st):
    out = []
    for d, _, fs in os.walk(os.path.join(st, "objects")):
        out += [os.path.join(d, f) for f in fs if f.endswith(".pack")]
    return sorted(out)
cmds = [["verify"], ["verify", "--snapshot", live[0]], ["verify", "--subset", "1/2"], ["gc"], ["stats"],
        ["stats", "--per-snapshot"]] + [["validate", s] for s in live]
bad = 0
def compare(stage):
    global bad
    a, b = store + "-a", store + "-b"
    for d in (a, b): shutil.rmtree(d, ignore_errors=True); shutil.copytree(store, d)
    for cmd in cmds:
        ra, rb_ = run(OLD, a, *cmd), run(NEW, b, *cmd)
        same = ra == rb_
        print(f"{stage:10} {' '.join(cmd)[:40]:42} exit {ra[0]}/{rb_[0]} {'same' if same else 'DIFFERENT'}")
        if not same:
            bad += 1
            for k in sorted(set(ra[1]) | set(rb_[1])) if isinstance(ra[1], dict) else []:
                if ra[1].get(k) != rb_[1].get(k): print("   ", k, ra[1].get(k), "|", rb_[1].get(k))
compare("healthy")
# A flipped byte in the middle of the largest pack, then a lost pack.
ps = packs(store); big = max(ps, key=os.path.getsize)
b = bytearray(open(big, "rb").read()); b[len(b) // 3] ^= 0x40; open(big, "wb").write(b)
compare("corrupt")
newest = max(packs(store), key=os.path.getmtime); os.remove(newest)
compare("lost pack")
sys.exit(1 if bad else 0)
