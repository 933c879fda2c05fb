//! [`Runtime`]: an AtoCore runtime (db, registry, Chroma dir) and a store
//! path in a temp dir, the store-level views the tests check, and the
//! changes they make to the runtime between snapshots.

use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use atosnap::id::Id;
use atosnap::stamp::Stamp;
use atosnap::store::manifest::Manifest;
use atosnap::store::{key::Secrets, location::StoreAddress, Store};

use super::files::{
    copy_tree, fixtures, insert_marker, make_db, pseudo_random, restorable_tree, Node,
};

/// A runtime at `dir/runtime/{data/atocore.db, config/project-registry.json,
/// data/chroma}` and a store at `dir/store` (a path; `store` may also be
/// an `s3://` URL, see `support::s3`).
pub struct Runtime {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub store: PathBuf,
}

impl Runtime {
    /// A copy of `fixtures/runtime` (the real 2,000-vector Chroma store);
    /// no store yet.
    pub fn fixture() -> Runtime {
        let rt = Runtime::empty();
        copy_tree(&fixtures(), &rt.runtime);
        rt
    }

    /// A tiny runtime: a small SQLite db (rollback journal), a registry and
    /// a Chroma dir with a SQLite file, an HNSW-like `.bin` and a pickle.
    pub fn tiny() -> Runtime {
        let rt = Runtime::empty();
        fs::create_dir_all(rt.chroma().join("seg")).unwrap();
        fs::create_dir_all(rt.runtime.join("config")).unwrap();
        make_db(&rt.db(), 300, false);
        fs::write(
            rt.registry(),
            br#"{"projects": [{"id": "p1", "name": "alpha"}, {"id": "p2", "name": "beta"}]}"#,
        )
        .unwrap();
        make_db(&rt.chroma().join("chroma.sqlite3"), 100, false);
        fs::write(
            rt.chroma().join("seg/data_level0.bin"),
            pseudo_random(1, 64 * 1024),
        )
        .unwrap();
        fs::write(
            rt.chroma().join("seg/index_metadata.pickle"),
            pseudo_random(2, 10_000),
        )
        .unwrap();
        rt
    }

    /// A small runtime built on the spot for the `serve` tests: a db of
    /// 500 documents, a Chroma dir with a SQLite file and a 1 MiB segment,
    /// a registry.
    pub fn synthetic() -> Runtime {
        let rt = Runtime::empty();
        fs::create_dir_all(rt.chroma().join("seg-1")).unwrap();
        fs::create_dir_all(rt.runtime.join("config")).unwrap();
        let db = rusqlite::Connection::open(rt.db()).unwrap();
        db.execute_batch(
            "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
             INSERT INTO docs(body) SELECT printf('document %d of the runtime', i) FROM n;",
        )
        .unwrap();
        drop(db);
        let chroma_db = rusqlite::Connection::open(rt.chroma().join("chroma.sqlite3")).unwrap();
        chroma_db
            .execute_batch("CREATE TABLE embeddings(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO embeddings(v) VALUES (x'00112233');")
            .unwrap();
        drop(chroma_db);
        fs::write(
            rt.chroma().join("seg-1/data_level0.bin"),
            vec![0u8; 1 << 20],
        )
        .unwrap();
        fs::write(rt.chroma().join("seg-1/header.bin"), b"hnsw header").unwrap();
        fs::write(rt.registry(), br#"{"projects": [{"id": "p1"}]}"#).unwrap();
        rt
    }

    /// A copy of another runtime and its store (both as they are now).
    pub fn clone_of(other: &Runtime) -> Runtime {
        let rt = Runtime::empty();
        copy_tree(&other.runtime, &rt.runtime);
        if other.store.exists() {
            copy_tree(&other.store, &rt.store);
        }
        rt
    }

    fn empty() -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by an unprivileged user (see `files::unprivileged`).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let runtime = dir.path().join("runtime");
        let store = dir.path().join("store");
        fs::create_dir_all(&runtime).unwrap();
        Runtime {
            dir,
            runtime,
            store,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.runtime.join("data/atocore.db")
    }
    pub fn registry(&self) -> PathBuf {
        self.runtime.join("config/project-registry.json")
    }
    pub fn chroma(&self) -> PathBuf {
        self.runtime.join("data/chroma")
    }
    pub fn store(&self) -> PathBuf {
        self.store.clone()
    }

    /// A path in the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The HNSW data file of the first Chroma segment.
    pub fn hnsw_bin(&self) -> PathBuf {
        let seg = fs::read_dir(self.chroma())
            .unwrap()
            .flatten()
            .find(|e| e.path().is_dir())
            .unwrap()
            .path();
        seg.join("data_level0.bin")
    }

    pub fn open_store(&self) -> Store {
        Store::open(&StoreAddress::local(&self.store), &Secrets::none()).unwrap()
    }

    pub fn manifest(&self, stamp: &str) -> Manifest {
        self.open_store()
            .read_manifest(
                &Stamp::parse(stamp).unwrap(),
                atosnap::store::ReadFrom::Cache,
            )
            .unwrap()
    }

    /// Re-encodes snapshot `stamp`'s manifest after `edit`, with a valid
    /// (unkeyed) checksum: what anyone who can write an unencrypted store
    /// can forge.
    pub fn forge_manifest(&self, stamp: &str, edit: impl FnOnce(&mut Manifest)) {
        let mut m = self.manifest(stamp);
        edit(&mut m);
        let bytes = m
            .encode(&atosnap::store::seal::Sealer::Plain)
            .expect("an encodable manifest");
        fs::write(self.snapshot_dir(stamp).join("manifest.bin"), bytes).unwrap();
    }

    pub fn snapshot_dir(&self, stamp: &str) -> PathBuf {
        self.store.join("snapshots").join(stamp)
    }

    /// Where a chunk is stored: (pack file, offset, stored length) of the
    /// frame holding it (in format 2 a frame holds up to 256 chunks).
    pub fn chunk_location(&self, id: &Id) -> (PathBuf, u64, u64) {
        let store = self.open_store();
        let index = store.load_index().unwrap();
        let loc = index.get(id).unwrap().expect("chunk is in the index");
        let pack = atosnap::store::Object::Pack(index.pack(loc.pack).id);
        (
            store.display(&pack),
            loc.frame_offset as u64,
            loc.frame_stored_len() as u64,
        )
    }

    /// The chunk ids of a file in a snapshot.
    pub fn file_chunks(&self, stamp: &str, path: &str) -> Vec<Id> {
        let m = self.manifest(stamp);
        let entry = m.find(path).unwrap_or_else(|| panic!("{path} in {stamp}"));
        let store = self.open_store();
        let index = store.load_index().unwrap();
        store
            .file_chunk_ids(&index, entry.file().expect("a file"))
            .unwrap()
    }

    /// The root of the list tree of a file in a snapshot (format 2).
    pub fn list_root(&self, stamp: &str, path: &str) -> Id {
        let m = self.manifest(stamp);
        let entry = m.find(path).unwrap_or_else(|| panic!("{path} in {stamp}"));
        match &entry.file().expect("a file").list {
            atosnap::store::manifest::ChunkList::Tree(r) => r.root.expect("a non-empty file"),
            atosnap::store::manifest::ChunkList::Ids(_) => panic!("{path}: a format-1 list"),
        }
    }

    /// What a reader of `path` in `stamp` misses first when `pack` is
    /// gone: the file's list root when the tree is in that pack (list
    /// blobs share the packs of the chunks written with them), else
    /// `chunk`.
    pub fn first_missing(&self, stamp: &str, path: &str, pack: &std::path::Path, chunk: Id) -> Id {
        let root = self.list_root(stamp, path);
        match self.chunk_location(&root).0 == pack {
            true => root,
            false => chunk,
        }
    }

    /// Every id snapshot `stamp` reaches: its chunks and list blobs.
    pub fn reachable_ids(&self, stamp: &str) -> std::collections::BTreeSet<Id> {
        let store = self.open_store();
        let index = store.load_index().unwrap();
        let mut ids = std::collections::BTreeSet::new();
        for f in self.manifest(stamp).entries.iter().filter_map(|e| e.file()) {
            store
                .file_reach(&index, f, &mut Default::default(), &mut |r| {
                    let (atosnap::store::lists::Reached::Blob(id)
                    | atosnap::store::lists::Reached::Chunk(id)) = r;
                    ids.insert(id);
                })
                .unwrap();
        }
        ids
    }

    /// Every pack file of the store, sorted.
    pub fn packs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = walkdir::WalkDir::new(self.store.join("objects"))
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .map(|e| e.into_path())
            .collect();
        out.sort();
        out
    }

    /// Pack files under objects/, by name relative to the store, with
    /// sizes.
    pub fn pack_sizes(&self) -> Vec<(String, u64)> {
        self.packs()
            .into_iter()
            .map(|p| {
                let len = fs::metadata(&p).unwrap().len();
                let name = p.strip_prefix(&self.store).unwrap();
                (name.to_string_lossy().into_owned(), len)
            })
            .collect()
    }

    /// Flips a byte in the middle of every pack (inside chunk data).
    pub fn corrupt_packs(&self) {
        for p in self.packs() {
            let mut bytes = fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x5a;
            fs::write(&p, bytes).unwrap();
        }
    }

    /// Entries of the store's tmp/.
    pub fn tmp_entries(&self) -> Vec<String> {
        match fs::read_dir(self.store.join("tmp")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// What a restore puts back, besides the db (whose bytes a rebuild
    /// may legitimately change): the registry and the Chroma tree. The
    /// folders holding the db and the registry are not restored, so their
    /// mtimes are not part of it.
    pub fn restorable(&self) -> BTreeMap<Vec<u8>, Node> {
        restorable_tree(&self.chroma(), &self.registry())
    }

    pub fn insert_marker(&self, id: &str) {
        insert_marker(&self.db(), id);
    }

    /// Inserts `rows` memories with random content into the live db.
    pub fn mutate_db(&self, rows: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .unwrap();
        for i in 0..rows {
            let text: String = (0..400)
                .map(|_| rng.random_range(b'a'..=b'z') as char)
                .collect();
            conn.execute(
                "INSERT OR REPLACE INTO memories(id, memory_type, content, project, created_at) VALUES (?1, 'note', ?2, 'test', datetime('now'))",
                rusqlite::params![format!("test-{seed}-{i}"), text],
            )
            .unwrap();
        }
    }

    /// Replaces the registry with valid JSON carrying `len` random
    /// characters, so each call gives the snapshot data of its own.
    pub fn set_registry(&self, len: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let pad: String = (0..len)
            .map(|_| rng.random_range(b'a'..=b'z') as char)
            .collect();
        let doc = serde_json::json!({"projects": [], "pad": pad});
        fs::write(self.registry(), serde_json::to_vec(&doc).unwrap()).unwrap();
    }

    /// Overwrites `percent` % of the 4 KiB blocks of the HNSW data file
    /// with random bytes (an in-place rewrite, like an HNSW insert).
    pub fn scramble_hnsw(&self, percent: u32, seed: u64) {
        let path = self.hnsw_bin();
        let mut data = fs::read(&path).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for block in data.chunks_mut(4096) {
            if rng.random_range(0..100) < percent {
                rng.fill(block);
            }
        }
        fs::write(&path, data).unwrap();
    }

    /// Writes a file of random bytes into the Chroma dir.
    pub fn add_junk(&self, name: &str, len: usize, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        fs::write(self.chroma().join(name), data).unwrap();
    }

    /// `init`, then a smaller pack target size so that a snapshot of the
    /// fixtures spans many packs.
    pub fn init_with_pack_size(&self, target: u64) {
        self.ok(&["init"]);
        let path = self.store.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        config["pack"]["target_size"] = Value::from(target);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    /// `init`, then format-2 frames of one chunk each: a byte flipped in
    /// a chunk's frame damages that chunk alone (tests that attribute one
    /// damaged chunk to snapshots and files; frames of many chunks are
    /// tested in `cli::frames`).
    pub fn init_with_single_chunk_frames(&self) {
        self.ok(&["init"]);
        let path = self.store.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        config["frames"]["max_chunks"] = Value::from(1);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    /// Every listed snapshot validates, verify finds nothing corrupt,
    /// missing or damaged, and nothing under snapshots/ is unparseable.
    /// Returns the verify report.
    pub fn assert_healthy(&self) -> Value {
        let list = self.ok(&["list"]);
        assert_eq!(list["unparseable"], serde_json::json!([]), "{list}");
        for s in list["snapshots"].as_array().unwrap() {
            let stamp = s["stamp"].as_str().unwrap();
            let r = self.run(&["validate", stamp]);
            assert_eq!(r.code, 0, "snapshot {stamp} does not validate: {}", r.json);
            assert_eq!(r.json["valid"], true);
        }
        let v = self.run(&["verify"]);
        assert_eq!(v.code, 0, "verify: {}", v.json);
        for k in ["corrupt", "missing", "damaged_objects"] {
            assert_eq!(v.json[k], serde_json::json!([]), "verify {k}: {}", v.json);
        }
        v.json
    }
}
