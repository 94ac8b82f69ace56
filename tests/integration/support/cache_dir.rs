//! Looking into a proxy's cache directory from a test.

use std::path::{Path, PathBuf};

/// Every file below `dir`, recursively; none when it does not exist.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Stored archive bodies (`archives/<aa>/<key>.bin`; their `<key>.json` descriptions are not
/// counted).
pub fn stored_archives(cache_dir: &Path) -> Vec<PathBuf> {
    files_below(&cache_dir.join("archives"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect()
}
