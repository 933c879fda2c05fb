//! Quarantine: damaged objects are moved under `quarantine/` (never
//! deleted), with a note saying why.

use crate::error::{Error, IoContext, Result};

use super::backend;
use super::lock::ExclusiveLock;
use super::{Dir, Object, Store};

impl Store {
    /// Moves a damaged object (a pack, a snapshot's summary) out of the way
    /// into `quarantine/`, beside a note saying why. Never deletes it.
    /// Returns its new name. Only under the exclusive lock.
    pub fn quarantine_object(
        &self,
        _lock: &ExclusiveLock,
        object: &Object,
        reason: &str,
    ) -> Result<String> {
        let name = object.name();
        let name = name.as_str();
        let snapshots = format!("{}/", Dir::Snapshots.name());
        let flat = name.rsplit('/').next().unwrap_or(name);
        let flat = if name.starts_with(&snapshots) {
            name.trim_start_matches(&snapshots).replace('/', "--")
        } else {
            flat.to_string()
        };
        let (stem, ext) = match flat.rsplit_once('.') {
            Some((stem, ext)) => (stem.to_string(), format!(".{ext}")),
            None => (flat.clone(), String::new()),
        };
        let mut n = 1;
        let dest = loop {
            let candidate = if n == 1 {
                Object::Quarantined(format!("{stem}{ext}")).name()
            } else {
                Object::Quarantined(format!("{stem}-{n}{ext}")).name()
            };
            let taken = self
                .backend
                .exists(&candidate)
                .ctx("stat", self.object_path(&candidate))?;
            if !taken {
                break candidate;
            }
            n += 1;
        };
        self.backend
            .rename(name, &dest)
            .ctx("move to quarantine", self.object_path(name))?;
        let note = serde_json::json!({
            "object": name,
            "reason": reason,
            "quarantined_at": chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let note_name = format!("{dest}.json");
        let bytes = serde_json::to_vec_pretty(&note).map_err(|e| Error::Encode {
            detail: e.to_string(),
        })?;
        // The object is safe already; a missing note loses only the reason.
        let _ = self.backend.write_once(&note_name, &bytes);
        Ok(dest)
    }

    /// Packs in `quarantine/`.
    pub fn list_quarantined_packs(&self) -> Result<Vec<backend::ListEntry>> {
        let list = self
            .backend
            .list_files(Dir::Quarantine.name())
            .ctx("list", self.display_dir(Dir::Quarantine))?;
        Ok(list
            .into_iter()
            .filter(|e| e.name.ends_with(".pack"))
            .collect())
    }

    /// Every object in `quarantine/` but the notes.
    pub fn quarantined_objects(&self) -> Result<Vec<String>> {
        let list = self
            .backend
            .list_files(Dir::Quarantine.name())
            .ctx("list", self.display_dir(Dir::Quarantine))?;
        let names: std::collections::HashSet<&str> = list.iter().map(|e| e.name.as_str()).collect();
        // A note is `<object>.json`, beside its object.
        let is_note = |n: &str| {
            n.strip_suffix(".json")
                .is_some_and(|obj| names.contains(obj))
        };
        Ok(list
            .iter()
            .map(|e| e.name.clone())
            .filter(|n| !is_note(n))
            .collect())
    }
}
