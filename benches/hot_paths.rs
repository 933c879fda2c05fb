//! Criterion benches of the hot paths: chunking, hashing, compression,
//! pack writing and index lookup. Data is 16 MiB shaped like the runtime:
//! text-like pages (SQLite) and float noise (HNSW).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use atosnap::chunk::{self, Strategy};
use atosnap::id::batch::{hash_many, Mode};
use atosnap::id::Id;
use atosnap::store::format::CompressionParams;
use atosnap::store::index::ChunkIndex;
use atosnap::store::pack::{PackEntry, PackWriter};
use atosnap::store::seal::{MasterKey, Sealer};

const SIZE: usize = 16 << 20;

fn text_like() -> Vec<u8> {
    let words = [
        "memory ",
        "project ",
        "chunk ",
        "vector ",
        "backup ",
        "the ",
        "a ",
        "of ",
        "restore ",
        "snapshot ",
        "index ",
        "query ",
    ];
    let mut out = Vec::with_capacity(SIZE);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    while out.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(SIZE);
    out
}

fn float_noise() -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE);
    let mut x: u32 = 12345;
    while out.len() < SIZE {
        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
        let f = (x as f32 / u32::MAX as f32) - 0.5;
        out.extend_from_slice(&f.to_le_bytes());
    }
    out
}

fn params() -> CompressionParams {
    CompressionParams {
        level: 3,
        ..CompressionParams::auto()
    }
}

fn bench_chunking(c: &mut Criterion) {
    let data = text_like();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(SIZE as u64));
    let strategies = [
        ("fixed_4k", Strategy::Fixed(4096)),
        (
            "fastcdc_64k",
            Strategy::Cdc {
                min: 16 << 10,
                avg: 64 << 10,
                max: 256 << 10,
            },
        ),
    ];
    for (name, s) in strategies {
        g.bench_function(name, |b| {
            b.iter(|| chunk::cut(black_box(&data), s, true).len())
        });
    }
    g.finish();
}

fn bench_hashing(c: &mut Criterion) {
    let data = float_noise();
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("blake3_4k_chunks", |b| {
        b.iter(|| {
            data.chunks(4096)
                .map(|c| Id::hash(c).0[0] as u64)
                .sum::<u64>()
        })
    });
    // The same chunks sixteen at a time in SIMD lanes (`id::batch`).
    g.bench_function("blake3_4k_chunks_batched", |b| {
        b.iter(|| {
            let pieces: Vec<&[u8]> = data.chunks(4096).collect();
            hash_many(Mode::Hash, &pieces)
                .iter()
                .map(|id| id.0[0] as u64)
                .sum::<u64>()
        })
    });
    g.finish();
}

/// The cost of a `repokey` store's data path: keyed ids and sealing /
/// opening every 4 KiB chunk (XChaCha20-Poly1305, 40 bytes added each).
fn bench_sealing(c: &mut Criterion) {
    let data = float_noise();
    let sealer = Sealer::repokey(MasterKey::from_bytes([7; 32]));
    let mut g = c.benchmark_group("sealing");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("keyed_blake3_4k_chunks", |b| {
        b.iter(|| {
            data.chunks(4096)
                .map(|c| sealer.chunk_id(c).0[0] as u64)
                .sum::<u64>()
        })
    });
    g.bench_function("seal_4k_chunks", |b| {
        b.iter(|| {
            data.chunks(4096)
                .map(|c| sealer.seal(c.to_vec(), b"id").len())
                .sum::<usize>()
        })
    });
    let sealed: Vec<Vec<u8>> = data
        .chunks(4096)
        .map(|c| sealer.seal(c.to_vec(), b"id"))
        .collect();
    g.bench_function("open_4k_chunks", |b| {
        b.iter(|| {
            sealed
                .iter()
                .map(|s| {
                    sealer
                        .open(black_box(s.clone()), b"id")
                        .map_or(0, |v| v.len())
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

fn bench_compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(SIZE as u64));
    for (name, data) in [("text", text_like()), ("floats", float_noise())] {
        g.bench_with_input(BenchmarkId::new("encode_4k", name), &data, |b, data| {
            b.iter(|| {
                data.chunks(4096)
                    .map(|c| chunk::encode(c, &params()).0.len())
                    .sum::<usize>()
            })
        });
        let encoded: Vec<(Vec<u8>, bool, u32)> = data
            .chunks(4096)
            .map(|c| {
                let (e, z) = chunk::encode(c, &params());
                (e, z, c.len() as u32)
            })
            .collect();
        g.bench_with_input(BenchmarkId::new("decode_4k", name), &encoded, |b, enc| {
            b.iter(|| {
                enc.iter()
                    .map(|(e, z, n)| {
                        chunk::decode(e.clone(), *z, *n)
                            .map(|r| r.len())
                            .unwrap_or(0)
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

fn bench_pack_and_index(c: &mut Criterion) {
    let data = text_like();
    let chunks: Vec<(Id, Vec<u8>)> = data
        .chunks(4096)
        .map(|c| (Id::hash(c), chunk::encode(c, &params()).0))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(SIZE as u64));
    let mut n = 0u64;
    g.bench_function("write_16MiB", |b| {
        b.iter(|| {
            n += 1;
            let path = dir.path().join(format!("{n}.pack"));
            let mut w = PackWriter::create(&path).expect("create pack");
            for (id, stored) in &chunks {
                w.add(*id, stored, 4096, true).expect("add");
            }
            let done = w.finish(|b| b).expect("finish");
            let _ = std::fs::remove_file(&done.path);
            done.size
        })
    });
    g.finish();

    let mut index = ChunkIndex::new();
    let entries: Vec<PackEntry> = (0..1_000_000u32)
        .map(|i| PackEntry {
            id: Id::hash(&i.to_le_bytes()),
            offset: i,
            stored_len: 100,
            raw_len: 4096,
            compressed: true,
        })
        .collect();
    let layout = atosnap::store::PackLayout::from_v1(entries, u64::MAX);
    index.add_pack(Id::hash(b"pack"), 1, &layout);
    let probes: Vec<Id> = (0..4096u32)
        .map(|i| Id::hash(&(i * 211).to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("lookup_1M_chunks", |b| {
        b.iter(|| {
            (probes.iter())
                .filter(|p| index.contains(p).unwrap_or(false))
                .count()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_chunking, bench_hashing, bench_sealing, bench_compression, bench_pack_and_index
}
criterion_main!(benches);
