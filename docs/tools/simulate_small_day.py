#!/usr/bin/env python3
"""Apply a small, "1 % day"-sized change to a copy of fixtures/runtime
without chromadb (stdlib only), to measure store growth per day.

What changes (modelled on ../shared/bench/mutate_runtime.py, scaled to the
2,000-vector fixture):
- atocore.db: +15 memories, +6 interactions (1 % of rows), 50 updates;
- chroma.sqlite3: +20 embeddings with 5 metadata rows each and their
  full-text rows, 20 queue entries written then consumed (free-page reuse);
- HNSW segment: 20 records appended to data_level0.bin, the neighbour lists
  of 32 existing records per insert rewritten in place (640 records spread
  over the file), length.bin appended, header.bin and link_lists.bin
  rewritten, index_metadata.pickle appended.

Usage: simulate_small_day.py RUNTIME_DIR SEED
"""
import glob
import os
import random
import sqlite3
import sys

root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
day = f"d{seed}"


def text(n):
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 9)))
                    for _ in range(n // 6))


db = sqlite3.connect(os.path.join(root, "data", "atocore.db"))
db.executemany("INSERT INTO memories(id, memory_type, content, project, created_at) VALUES (?,?,?,?,datetime('now'))",
               [(f"mem-{day}-{i}", "note", text(600), "p", ) for i in range(15)])
cols = [r[1] for r in db.execute("PRAGMA table_info(interactions)")]
db.executemany(f"INSERT INTO interactions VALUES ({','.join('?' * len(cols))})",
               [tuple(f"int-{day}-{i}" if c == "id" else text(1500) for c in cols) for i in range(6)])
ids = [r[0] for r in db.execute("SELECT id FROM memories ORDER BY random() LIMIT 50")]
db.executemany("UPDATE memories SET confidence=?, updated_at=datetime('now') WHERE id=?",
               [(rng.random(), i) for i in ids])
db.commit()
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()

ch = sqlite3.connect(os.path.join(root, "data", "chroma", "chroma.sqlite3"))
seg = ch.execute("SELECT segment_id FROM embeddings LIMIT 1").fetchone()[0]
for i in range(20):
    eid = f"chunk-{day}-{i}"
    ch.execute("INSERT INTO embeddings_queue(operation, topic, id, vector, encoding, metadata) VALUES (0,'t',?,?,'FLOAT32','{}')",
               (eid, os.urandom(1536)))
    cur = ch.execute("INSERT INTO embeddings(segment_id, embedding_id, seq_id) VALUES (?,?,?)", (seg, eid, os.urandom(8)))
    rid = cur.lastrowid
    for k in range(5):
        ch.execute("INSERT INTO embedding_metadata(id, key, string_value) VALUES (?,?,?)", (rid, f"k{k}", text(80)))
    ch.execute("INSERT INTO embedding_fulltext_search(rowid, string_value) VALUES (?,?)", (rid, text(400)))
ch.execute("DELETE FROM embeddings_queue WHERE topic='t'")
ch.commit()
ch.close()

segdir = [d for d in glob.glob(os.path.join(root, "data", "chroma", "*")) if os.path.isdir(d)][0]
level0 = os.path.join(segdir, "data_level0.bin")
size = os.path.getsize(level0)
rec = 1676
n = size // rec
with open(level0, "r+b") as f:
    for r in rng.sample(range(n), min(n, 640)):
        f.seek(r * rec)
        f.write(os.urandom(132))          # neighbour count + 32 links
    f.seek(0, 2)
    f.write(os.urandom(20 * rec))
with open(os.path.join(segdir, "length.bin"), "ab") as f:
    f.write(os.urandom(80))
for name in ("header.bin", "link_lists.bin"):
    p = os.path.join(segdir, name)
    data = os.urandom(os.path.getsize(p))
    with open(p, "wb") as f:
        f.write(data)
with open(os.path.join(segdir, "index_metadata.pickle"), "ab") as f:
    f.write(os.urandom(20 * 48))
