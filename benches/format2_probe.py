#!/usr/bin/env python3
"""Format 2 probe (issue 15, docs/design/format2.md §5 step 0): the bytes and
decode speed of each way of compressing chunks, and the list bytes of each way
of describing a file's chunk list, on a runtime (a first snapshot) and its day.

    VENV=~/.cache/atosnap-bench/venv   # needs `pip install zstandard`
    nice -n 10 $VENV/bin/python benches/format2_probe.py \
        --old ~/.cache/atosnap-bench/rt-130000 --new ~/.cache/atosnap-bench/rt-130000-day2 \
        [--floor physics.json] > probe.json

Chunking (as atosnap cuts, src/chunk.rs strategy_for with the default config):
SQLite files at their page size (from the header), `*.bin` in 4 KiB blocks,
every other file (the HNSW pickle, JSON) in fixed 64 KiB pieces, an
approximation of FastCDC 16/64/256 KiB that is exact enough for files that
are rewritten whole every day (under 1 % of the runtime). A chunk is novel
when its content (blake2b-128) is in no earlier chunk of the old runtime nor
earlier in this pass: what a content-addressed store writes.

Modes, each at zstd levels 1 and 3 (--levels):
  chunk90   per chunk, stored raw above 90 % (format 1 today)
  chunk97   per chunk, stored raw above 97 %
  frameK    consecutive novel chunks of one file in one zstd frame closed at
            K KiB (K = 16, 64, 256, or --frames-kib), raw above 97 %
  dict      per chunk with one store-wide dictionary trained on the old
            runtime (one compressible chunk in 32, evenly thinned to 8 MiB,
            --dict-kib), raw above 97 %
  stream    all novel chunks as one zstd stream (no dedup floor: physics.py)
Decode speed: each unit stored compressed is decompressed right after it is
made and the decompression alone is timed in thread CPU time (one core; a
loaded machine steals wall time, not CPU time), MB of raw output per
second (decode_mb_s); decode_mb_s_all counts raw-stored units as free.

Lists (the day only, from the two runtimes' chunk ids): format 1 (32 B per
chunk of every file), positional Merkle trees (FullLeaf of F ids, interior
nodes of 64 children: new nodes only, content-addressed) and delta leaves
(leaf_slots 1024, node_slots 1024: a changed leaf is 64 + 36 B per changed
slot when that is smaller than the full leaf, plus the interior path).
"""
import argparse
import hashlib
import io
import json
import os
import time

import zstandard as zstd

SQLITE_MAGIC = b"SQLite format 3\0"
CDC_APPROX = 64 * 1024
FRAMES_KIB = (16, 64, 256)


def files(root):
    for base in ("data", "config"):
        for dirpath, dirs, names in os.walk(os.path.join(root, base)):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    yield path


def chunk_size(path):
    with open(path, "rb") as f:
        head = f.read(18)
    if len(head) == 18 and head[:16] == SQLITE_MAGIC:
        raw = int.from_bytes(head[16:18], "big")
        return 65536 if raw == 1 else raw
    if path.endswith(".bin"):
        return 4096
    return CDC_APPROX


def chunks(path):
    size = chunk_size(path)
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block


def cid(block):
    return hashlib.blake2b(block, digest_size=16).digest()


def is_hnsw(path):
    return path.endswith(".bin")


class Mode:
    """One way of storing novel chunks: counts stored bytes, units, raw-stored
    chunks and decode time."""

    def __init__(self, name, level, cutoff, frame_bytes=None, dict_data=None, alt_cutoff=None):
        self.name, self.level, self.cutoff, self.frame_bytes = name, level, cutoff, frame_bytes
        # The same units under another cutoff (chunk90: format 1 today).
        self.alt_cutoff, self.alt_stored, self.alt_raw_units, self.alt_hnsw_raw = alt_cutoff, 0, 0, 0
        kw = {"level": level, "write_content_size": True}
        if dict_data is not None:
            kw["dict_data"] = dict_data
        self.cctx = zstd.ZstdCompressor(**kw)
        self.dctx = zstd.ZstdDecompressor(dict_data=dict_data) if dict_data else zstd.ZstdDecompressor()
        self.stored = self.raw = self.units = self.chunks = self.raw_units = 0
        self.hnsw_chunks = self.hnsw_raw_chunks = 0
        self.dec_s, self.dec_raw = 0.0, 0
        self.pending = []

    def add(self, block, hnsw):
        if self.frame_bytes is None:
            self._emit([block], hnsw)
            return
        self.pending.append(block)
        if sum(map(len, self.pending)) >= self.frame_bytes:
            self.flush(hnsw)

    def flush(self, hnsw=False):
        if self.pending:
            self._emit(self.pending, hnsw)
            self.pending = []

    def _emit(self, blocks, hnsw):
        raw = b"".join(blocks)
        out = self.cctx.compress(raw)
        self.units += 1
        self.chunks += len(blocks)
        self.raw += len(raw)
        if hnsw:
            self.hnsw_chunks += len(blocks)
        if self.alt_cutoff is not None:
            alt_raw = len(out) > self.alt_cutoff * len(raw)
            self.alt_stored += len(raw) if alt_raw else len(out)
            self.alt_raw_units += alt_raw
            self.alt_hnsw_raw += len(blocks) if alt_raw and hnsw else 0
        if len(out) > self.cutoff * len(raw):
            self.stored += len(raw)
            self.raw_units += 1
            if hnsw:
                self.hnsw_raw_chunks += len(blocks)
            return
        self.stored += len(out)
        self.dec_raw += len(raw)
        t = time.thread_time()
        self.dctx.decompress(out)
        self.dec_s += time.thread_time() - t

    def report(self, floor):
        # Metadata format 2 adds per stored chunk: a 36 B trailer entry and a
        # 32 B leaf id; per frame 16 B (the list costs of a day are in "lists").
        meta = 68 * self.chunks + 16 * self.units
        r = {
            "mode": self.name, "level": self.level, "stored_bytes": self.stored,
            "raw_bytes": self.raw, "chunks": self.chunks, "units": self.units,
            "raw_units": self.raw_units, "meta_bytes_est": meta,
            # zstd decode speed over the units stored compressed; with the raw
            # units counted as free (a copy), the speed a restore sees.
            "decode_mb_s": round(self.dec_raw / 1e6 / self.dec_s, 1) if self.dec_s else None,
            "decode_mb_s_all": round(self.raw / 1e6 / self.dec_s, 1) if self.dec_s else None,
        }
        if self.hnsw_chunks:
            r["hnsw_raw_share"] = round(self.hnsw_raw_chunks / self.hnsw_chunks, 4)
        if floor:
            r["x_floor"] = round(self.stored / floor, 4)
            r["x_floor_with_meta"] = round((self.stored + meta) / floor, 4)
        return r

    def reports(self, floor):
        rows = [self.report(floor)]
        if self.alt_cutoff is not None:
            alt = dict(rows[0], mode="chunk90", stored_bytes=self.alt_stored, raw_units=self.alt_raw_units)
            alt.pop("decode_mb_s", None)
            alt.pop("decode_mb_s_all", None)
            if self.hnsw_chunks:
                alt["hnsw_raw_share"] = round(self.alt_hnsw_raw / self.hnsw_chunks, 4)
            if floor:
                alt["x_floor"] = round(self.alt_stored / floor, 4)
                alt["x_floor_with_meta"] = round((self.alt_stored + alt["meta_bytes_est"]) / floor, 4)
            rows.insert(0, alt)
        return rows


class Stream:
    """All novel chunks as one zstd stream (the floor's shape, after dedup)."""

    def __init__(self, level):
        self.name, self.level = "stream", level
        self.buf = io.BytesIO()
        self.w = zstd.ZstdCompressor(level=level).stream_writer(self.buf, closefd=False)
        self.raw = 0

    def add(self, block, hnsw):
        self.w.write(block)
        self.raw += len(block)

    def flush(self, hnsw=False):
        pass

    def reports(self, floor):
        return [self.report(floor)]

    def report(self, floor):
        self.w.flush(zstd.FLUSH_FRAME)
        data = self.buf.getvalue()
        t = time.thread_time()
        out = zstd.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        dec = time.thread_time() - t
        assert len(out) == self.raw
        r = {"mode": "stream", "level": self.level, "stored_bytes": len(data), "raw_bytes": self.raw,
             "decode_mb_s": round(self.raw / 1e6 / dec, 1)}
        if floor:
            r["x_floor"] = round(len(data) / floor, 4)
        return r


def train_dictionary(root, dict_bytes, sample_cap=8 << 20):
    samples = []
    probe = zstd.ZstdCompressor(level=1)
    for path in files(root):
        for i, block in enumerate(chunks(path)):
            if i % 32 == 0 and len(probe.compress(block)) <= 0.97 * len(block):
                samples.append(block)
    total = sum(map(len, samples))
    if total > sample_cap:
        step = total / sample_cap
        samples = [samples[int(i * step)] for i in range(int(len(samples) / step))]
    t = time.perf_counter()
    # No steps/threads: the parameters ZDICT_trainFromBuffer uses (d=8, 4
    # steps), which is what zstd::dict::from_samples in the crate calls.
    d = zstd.train_dictionary(dict_bytes, samples)
    info = {"samples": len(samples), "sample_bytes": sum(map(len, samples)),
            "dict_bytes": len(d.as_bytes()), "train_s": round(time.perf_counter() - t, 2)}
    return d, info


def make_modes(levels, kinds, frames_kib, dictionary):
    modes = []
    for lv in levels:
        if "chunk" in kinds:
            modes.append(Mode("chunk97", lv, 0.97, alt_cutoff=0.90))
        if "frame" in kinds:
            for k in frames_kib:
                modes.append(Mode(f"frame{k}", lv, 0.97, frame_bytes=k * 1024))
        if "dict" in kinds:
            modes.append(Mode("dict", lv, 0.97, dict_data=dictionary))
        if "stream" in kinds:
            modes.append(Stream(lv))
    return modes


def store_pass(root, seen, modes, ids_out):
    """Feeds every novel chunk of `root` to every mode; fills `ids_out` with
    each file's chunk ids (relative path -> list)."""
    for path in files(root):
        hnsw = is_hnsw(path)
        ids = ids_out.setdefault(os.path.relpath(path, root), [])
        for block in chunks(path):
            h = cid(block)
            ids.append(h)
            if h in seen:
                continue
            seen.add(h)
            for m in modes:
                m.add(block, hnsw)
        for m in modes:
            m.flush(hnsw)
    return modes


# ---- lists ----------------------------------------------------------------

def node_id(body):
    return hashlib.blake2b(body, digest_size=16).digest()


def merkle(ids, leaf, fan):
    """Positional tree: returns {node id: stored bytes} for every node."""
    nodes = {}
    level = []
    for i in range(0, len(ids), leaf):
        body = b"L" + b"".join(ids[i:i + leaf])
        n = node_id(body)
        nodes[n] = 32 + 32 * len(ids[i:i + leaf])
        level.append(n)
    while len(level) > 1:
        up = []
        for i in range(0, len(level), fan):
            body = b"I" + b"".join(level[i:i + fan])
            n = node_id(body)
            nodes[n] = 32 + 40 * len(level[i:i + fan])
            up.append(n)
        level = up
    return nodes


def merkle_day(old, new, leaf, fan):
    known = {}
    for ids in old.values():
        known.update(merkle(ids, leaf, fan))
    added = 0
    for ids in new.values():
        for n, b in merkle(ids, leaf, fan).items():
            if n not in known:
                known[n] = b
                added += b
    return added


def delta_day(old, new, leaf=1024, fan=1024):
    """Day 1 after a full snapshot (chain depth 0): per changed leaf the
    smaller of a DeltaLeaf (64 + 36 B per changed slot) and a FullLeaf, plus
    every interior node above a changed leaf. Files absent yesterday or whose
    length changed at a leaf are FullLeaves."""
    added = 0
    for path, ids in new.items():
        prev = old.get(path, [])
        nleaves = (len(ids) + leaf - 1) // leaf
        changed = []
        for i in range(nleaves):
            a, e = ids[i * leaf:(i + 1) * leaf], prev[i * leaf:(i + 1) * leaf]
            if a == e:
                continue
            changed.append(i)
            full = 32 + 32 * len(a)
            if len(a) == len(e):
                delta = 64 + 36 * sum(1 for x, y in zip(a, e) if x != y)
                added += min(delta, full)
            else:
                added += full
        # interior path: the nodes above the changed leaves, level by level
        level_changed, width = set(changed), nleaves
        while width > 1 and level_changed:
            parents = {i // fan for i in level_changed}
            for p in parents:
                added += 32 + 40 * min(fan, width - p * fan)
            level_changed, width = parents, (width + fan - 1) // fan
    return added


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--floor", help="physics.py's JSON for these runtimes (the floors)")
    ap.add_argument("--levels", default="1,3")
    ap.add_argument("--dict-kib", type=int, default=110)
    ap.add_argument("--modes", default="chunk,frame,dict,stream", help="which kinds of mode to run")
    ap.add_argument("--frames-kib", default=",".join(map(str, FRAMES_KIB)), help="frame caps to try")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    kinds = args.modes.split(",")
    frames_kib = [int(x) for x in args.frames_kib.split(",")]
    floor = json.load(open(args.floor)) if args.floor else {}
    result = {"old": args.old, "new": args.new, "floor": floor}

    t = time.perf_counter()
    dictionary = None
    if "dict" in kinds:
        dictionary, result["dictionary"] = train_dictionary(args.old, args.dict_kib * 1024)
    seen, old_ids, new_ids = set(), {}, {}
    first = store_pass(args.old, seen, make_modes(levels, kinds, frames_kib, dictionary), old_ids)
    result["first"] = [r for m in first for r in m.reports(floor.get("first_zstd3_bytes"))]
    del first
    day = store_pass(args.new, seen, make_modes(levels, kinds, frames_kib, dictionary), new_ids)
    result["day"] = [r for m in day for r in m.reports(floor.get("day_zstd3_bytes"))]
    del day

    result["lists_day"] = {
        "format1": 32 * sum(map(len, new_ids.values())),
        "merkle_f16_n64": merkle_day(old_ids, new_ids, 16, 64),
        "merkle_f64_n64": merkle_day(old_ids, new_ids, 64, 64),
        "merkle_f1024_n1024": merkle_day(old_ids, new_ids, 1024, 1024),
        "delta_l1024_n1024": delta_day(old_ids, new_ids),
    }
    result["lists_first"] = {
        "format1": 32 * sum(map(len, old_ids.values())),
        "merkle_f1024_n1024": sum(sum(merkle(ids, 1024, 1024).values()) for ids in old_ids.values()),
    }
    result["wall_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
