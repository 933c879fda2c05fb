//! Paths of the runtime and the store, from flags and `ATOCORE_*` variables
//! (flags beat variables; clap reads the variables, this module applies the
//! defaults that depend on `ATOCORE_DATA_DIR`).

use std::path::{Path, PathBuf};

/// Where everything is.
#[derive(Clone, Debug)]
pub struct Paths {
    pub store: PathBuf,
    pub db: PathBuf,
    pub registry: PathBuf,
    pub chroma_dir: PathBuf,
}

impl Paths {
    /// Resolves the paths; `None` means "not given" (neither flag nor env).
    pub fn resolve(
        store: Option<PathBuf>,
        db: Option<PathBuf>,
        registry: Option<PathBuf>,
        chroma_dir: Option<PathBuf>,
    ) -> Paths {
        let data_dir = std::env::var_os("ATOCORE_DATA_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("./data"));
        Paths::resolve_with_data_dir(store, db, registry, chroma_dir, &data_dir)
    }

    pub fn resolve_with_data_dir(
        store: Option<PathBuf>,
        db: Option<PathBuf>,
        registry: Option<PathBuf>,
        chroma_dir: Option<PathBuf>,
        data_dir: &Path,
    ) -> Paths {
        Paths {
            store: store.unwrap_or_else(|| PathBuf::from("./backups")),
            db: db.unwrap_or_else(|| data_dir.join("atocore.db")),
            registry: registry.unwrap_or_else(|| PathBuf::from("./config/project-registry.json")),
            chroma_dir: chroma_dir.unwrap_or_else(|| data_dir.join("chroma")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_data_dir_and_flags_win() {
        let p = Paths::resolve_with_data_dir(None, None, None, None, Path::new("/srv/data"));
        assert_eq!(p.db, PathBuf::from("/srv/data/atocore.db"));
        assert_eq!(p.chroma_dir, PathBuf::from("/srv/data/chroma"));
        assert_eq!(p.store, PathBuf::from("./backups"));
        assert_eq!(p.registry, PathBuf::from("./config/project-registry.json"));
        let p = Paths::resolve_with_data_dir(
            None,
            Some("/x.db".into()),
            None,
            None,
            Path::new("/srv/data"),
        );
        assert_eq!(p.db, PathBuf::from("/x.db"));
    }
}
