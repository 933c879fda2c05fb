#!/usr/bin/env bash
# Side-by-side benchmark: atosnap vs restic vs borg on the 130,000-vector
# runtime (SPEC §5). Installs what is missing, builds (and caches) the
# runtime, builds atosnap in release mode, then runs benches/side_by_side.py.
#
#   benches/side_by_side.sh [--trials 3] [--tools atosnap,restic,borg-lz4,borg-zstd3]
#
# BENCH_DIR (default ~/.cache/atosnap-bench) keeps the runtimes between runs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
shared="${SHARED_BENCH:-$here/../shared/bench}"
bench="${BENCH_DIR:-$HOME/.cache/atosnap-bench}"
vectors="${VECTORS:-130000}"
mkdir -p "$bench"

need=()
for tool in restic borg hyperfine /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq restic borgbackup hyperfine time >/dev/null
fi

if [ ! -x "$bench/venv/bin/python" ]; then
  python3 -m venv "$bench/venv"
  "$bench/venv/bin/pip" install -q chromadb numpy
fi
if [ ! -f "$bench/rt-$vectors.done" ]; then
  rm -rf "$bench/rt-$vectors" "$bench/rt-$vectors-day2"
  "$bench/venv/bin/python" "$shared/make_runtime.py" --out "$bench/rt-$vectors" --vectors "$vectors" --seed 1
  cp -a "$bench/rt-$vectors" "$bench/rt-$vectors-day2"
  "$bench/venv/bin/python" "$shared/mutate_runtime.py" --dir "$bench/rt-$vectors-day2" --fraction 0.01 --seed 2
  touch "$bench/rt-$vectors.done"
fi

(cd "$here" && cargo build --release -q)
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)" >&2
echo "restic: $(restic version | head -1); borg: $(borg --version)" >&2
python3 "$here/benches/side_by_side.py" --day1 "$bench/rt-$vectors" --day2 "$bench/rt-$vectors-day2" \
  --atosnap "$here/target/release/atosnap" --scratch "$bench" "$@"
