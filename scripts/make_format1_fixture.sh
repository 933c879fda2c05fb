#!/usr/bin/env bash
# Makes fixtures/format1/: two format-1 stores (plain/ and repokey/, the
# latter under fixtures/format1/password) holding the same three snapshots of
# a small runtime, a tag, a drill record, and expect.json: what every read
# command answered on them, minus the fields that vary between runs
# (durations, temp paths, the drill's own time). tests/library/format1.rs
# runs the read commands on copies of both stores and checks them against
# expect.json, so that format-2 work cannot break reading format 1.
#
#   scripts/make_format1_fixture.sh [ATOSNAP]   # default: target/debug/atosnap
#
# Run once, with a binary that writes format 1 (the committed fixture was
# made on 2026-12-05 with main's release build, main at c5e03d0);
# rerunning replaces the stores (new store ids and pack names), so do not
# rerun it after `init` writes format 2. Needs sqlite3 and jq.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
atosnap=${1:-$root/target/debug/atosnap}
out=$root/fixtures/format1
src=$root/fixtures/runtime
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$out/plain" "$out/repokey" "$out/expect.json"
mkdir -p "$out"
[ -f "$out/password" ] || printf 'format1 fixture password\n' > "$out/password"

# A small runtime: a SQLite db, the fixture registry, a Chroma dir with a
# SQLite file and one HNSW segment (the first 64 KiB of the fixture's real
# data_level0.bin plus its small files).
rt=$work/rt
seg=$rt/data/chroma/e8763d70-0924-4389-9e69-cddb1f90792c
mkdir -p "$seg" "$rt/config"
cp "$src/config/project-registry.json" "$rt/config/"
sqlite3 "$rt/data/atocore.db" "
  CREATE TABLE memories(id INTEGER PRIMARY KEY, project TEXT, body TEXT);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 400)
  INSERT INTO memories(project, body)
    SELECT 'p' || (i % 7), printf('memory %d: the format-1 fixture keeps this text', i) FROM n;"
sqlite3 "$rt/data/chroma/chroma.sqlite3" "
  CREATE TABLE embeddings(id INTEGER PRIMARY KEY, segment TEXT, label INTEGER);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200)
  INSERT INTO embeddings(segment, label) SELECT 'e8763d70', i FROM n;"
head -c 65536 "$src/data/chroma/e8763d70-0924-4389-9e69-cddb1f90792c/data_level0.bin" > "$seg/data_level0.bin"
for f in header.bin length.bin link_lists.bin; do
  cp "$src/data/chroma/e8763d70-0924-4389-9e69-cddb1f90792c/$f" "$seg/"
done

day2() { # rows added, one HNSW block rewritten in place, the pickle appears
  sqlite3 "$rt/data/atocore.db" "
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 60)
    INSERT INTO memories(project, body) SELECT 'p9', printf('day two memory %d', i) FROM n;"
  sqlite3 "$rt/data/chroma/chroma.sqlite3" "UPDATE embeddings SET label = -label WHERE id % 10 = 0;"
  dd if="$src/data/chroma/e8763d70-0924-4389-9e69-cddb1f90792c/data_level0.bin" of="$seg/data_level0.bin" \
    bs=4096 skip=40 seek=5 count=1 conv=notrunc status=none
  cp "$src/data/chroma/e8763d70-0924-4389-9e69-cddb1f90792c/index_metadata.pickle" "$seg/"
}
day3() { # rows deleted, the registry edited; this snapshot leaves Chroma out
  sqlite3 "$rt/data/atocore.db" "DELETE FROM memories WHERE id % 5 = 0;"
  jq '.projects[0].aliases += ["fixture"]' "$rt/config/project-registry.json" > "$work/reg.json"
  mv "$work/reg.json" "$rt/config/project-registry.json"
}

s1=20260101T000000Z s2=20260102T000000Z s3=20260103T000000Z
stamps=("$s1" "$s2" "$s3")
# Stable fields only: durations, temp paths and the drill's own time go.
strip='walk(if type == "object" then del(.duration_ms, .store, .target_db, .output) else . end)'

for kind in plain repokey; do
  store=$out/$kind
  run() {
    "$atosnap" --quiet --store "$store" --cache-dir "$work/cache" --db "$rt/data/atocore.db" \
      --registry "$rt/config/project-registry.json" --chroma-dir "$rt/data/chroma" \
      --password-file "$out/password" "$@"
  }
  run init --encryption "$([ $kind = plain ] && echo none || echo repokey)" > /dev/null
  # Each store gets its own copy of the runtime's history.
  rm -rf "$work/rt0" && cp -a "$rt" "$work/rt0"
  run create --chroma --tag weekly --at 2026-01-01T00:00:00Z > /dev/null
  day2
  run create --chroma --at 2026-01-02T00:00:00Z > /dev/null
  day3
  run create --at 2026-01-03T00:00:00Z > /dev/null
  run tag "$s1" --add pinned > /dev/null
  run drill "$s2" > /dev/null
  rm -rf "$rt" && mv "$work/rt0" "$rt"
  rm -rf "$store/locks" "$store/tmp"

  # What the read commands answer, asked of a copy (drill and restore write
  # a drill record / need a target), in the order the test asks them.
  rm -rf "$work/copy" && cp -a "$store" "$work/copy"
  store=$work/copy
  {
    echo "{\"list\": $(run list | jq "$strip"),"
    echo "\"verify\": $(run verify | jq "$strip"),"
    echo "\"diff\": [$(run diff "$s1" "$s2" | jq "$strip"), $(run diff "$s2" "$s3" | jq "$strip")],"
    echo "\"snapshots\": {"
    sep=""
    for s in "${stamps[@]}"; do
      files=$(run ls "$s" --long | jq -r '.entries[] | select(.kind == "file") | .path')
      dumps=$(for f in $files; do run dump "$s" "$f" -o "$work/dump" | jq "$strip"; done | jq -s .)
      rm -rf "$work/to"
      echo "$sep\"$s\": {\"validate\": $(run validate "$s" | jq "$strip"),"
      echo "\"ls\": $(run ls "$s" --long | jq "$strip"),"
      echo "\"dump\": $dumps,"
      echo "\"restore\": $(run restore "$s" --to "$work/to" | jq "$strip"),"
      echo "\"drill\": $(run drill "$s" | jq "$strip")}"
      sep=","
    done
    echo "}}"
  } | jq . > "$work/$kind.json"
done

jq -n --slurpfile p "$work/plain.json" --slurpfile r "$work/repokey.json" \
  '{plain: $p[0], repokey: $r[0]}' > "$out/expect.json"
du -sh "$out"
