//! What makes a stored archive trustworthy, and the checks that keep it so.
//!
//! | when | archives with a published checksum | archives without (GitHub dists, ~10 % of Magento's) |
//! |---|---|---|
//! | download | length as announced, sha1 (or a release file's md5) as published | length as announced (a close-delimited body is never stored), zip structure and every entry's CRC |
//! | every serve | length against the description before headers; CRC-32 of the bytes sent before the last byte | the same |
//! | scrub, `cache verify` | sha256 recorded at download (older descriptions: sha1) | the same, plus the zip check |
//!
//! The description (`<key>.json`) records the digests of the bytes stored: sha1 (Composer's
//! own checksum), sha256 (what the scrub and `cache verify` trust) and CRC-32 (cheap enough to
//! check on every serve).

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use md5::Md5;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::composer::Checksum;

/// What is stored beside each archive (`<key>.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredArchive {
    pub package: String,
    /// The upstream URL (never carries credentials: those go in a header).
    pub url: String,
    /// The sha1 upstream's metadata promised, if any.
    pub shasum: Option<String>,
    /// The md5 the release-download endpoint promised, if any. Absent (not `null`) otherwise,
    /// so descriptions of dists keep the shape older versions read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    pub len: u64,
    /// Digests of the bytes stored. Absent from descriptions written by older versions
    /// (`sha256` and `crc32`) or older still (`sha1`).
    #[serde(default)]
    pub sha1: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub crc32: Option<u32>,
}

impl StoredArchive {
    /// Whether its publisher promised a checksum that the download was verified against.
    pub fn had_published_checksum(&self) -> bool {
        self.shasum.is_some() || self.md5.is_some()
    }

    /// The check every serve makes over the bytes it sends.
    pub fn serve_check(&self) -> ServeCheck {
        match (self.crc32, self.sha1.as_ref().or(self.shasum.as_ref())) {
            (Some(crc), _) => ServeCheck::Crc32(crc),
            (None, Some(sha1)) => ServeCheck::Sha1(sha1.to_ascii_lowercase()),
            (None, None) => ServeCheck::LengthOnly,
        }
    }
}

/// How bytes read back from the store are checked while they are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServeCheck {
    Crc32(u32),
    /// Descriptions written before CRC-32 was recorded.
    Sha1(String),
    /// Nothing recorded but the length (the oldest descriptions, of archives without shasum).
    LengthOnly,
}

/// Running state of a [`ServeCheck`].
pub enum ServeHasher {
    Crc32(crc32fast::Hasher, u32),
    Sha1(Box<Sha1>, String),
    LengthOnly,
}

impl ServeHasher {
    pub fn new(check: &ServeCheck) -> Self {
        match check {
            ServeCheck::Crc32(crc) => ServeHasher::Crc32(crc32fast::Hasher::new(), *crc),
            ServeCheck::Sha1(sha1) => ServeHasher::Sha1(Box::default(), sha1.clone()),
            ServeCheck::LengthOnly => ServeHasher::LengthOnly,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            ServeHasher::Crc32(h, _) => h.update(data),
            ServeHasher::Sha1(h, _) => h.update(data),
            ServeHasher::LengthOnly => {}
        }
    }

    /// Whether everything hashed matches what was recorded.
    pub fn matches(self) -> bool {
        match self {
            ServeHasher::Crc32(h, expected) => h.finalize() == expected,
            ServeHasher::Sha1(h, expected) => hex::encode(h.finalize()) == expected,
            ServeHasher::LengthOnly => true,
        }
    }

    /// Checks a whole buffer at once.
    pub fn check(check: &ServeCheck, bytes: &[u8]) -> bool {
        let mut hasher = Self::new(check);
        hasher.update(bytes);
        hasher.matches()
    }
}

/// The digests of a download, computed as its bytes arrive.
#[derive(Clone, Default)]
pub struct Digests {
    pub sha1: Sha1,
    sha256: Sha256,
    crc32: crc32fast::Hasher,
    /// Only for a download promised by an md5: no other archive pays for it.
    md5: Option<Md5>,
}

impl Digests {
    /// The digests a download promised `checksum` needs.
    pub fn for_checksum(checksum: Option<&Checksum>) -> Self {
        Self {
            md5: checksum.and_then(Checksum::md5).map(|_| Md5::new()),
            ..Self::default()
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha1.update(data);
        self.sha256.update(data);
        self.crc32.update(data);
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
    }

    pub fn sha1_hex(&self) -> String {
        hex::encode(self.sha1.clone().finalize())
    }

    /// Whether the bytes so far have the promised digest: `Err` says what they have instead.
    pub fn check(&self, checksum: &Checksum) -> Result<(), String> {
        let (name, actual, expected) = match checksum {
            Checksum::Sha1(expected) => ("sha1", self.sha1_hex(), expected),
            Checksum::Md5(expected) => {
                let actual = self.md5.as_ref().map(|m| hex::encode(m.clone().finalize()));
                ("md5", actual.unwrap_or_default(), expected)
            }
        };
        if actual.eq_ignore_ascii_case(expected) {
            Ok(())
        } else {
            Err(format!("{name} {actual}, {expected} promised"))
        }
    }

    /// (sha1, sha256, crc32) of everything so far.
    pub fn finish(&self) -> (String, String, u32) {
        (
            self.sha1_hex(),
            hex::encode(self.sha256.clone().finalize()),
            self.crc32.clone().finalize(),
        )
    }
}

/// Whether `reader` holds a well-formed zip: its central directory parses and every entry
/// decompresses to its recorded CRC-32. Entries in a format this build cannot decompress (or
/// encrypted ones) are not checked; nothing Composer publishes uses them. Blocking.
pub fn check_zip<R: Read + Seek>(reader: R) -> Result<(), String> {
    let mut archive =
        zip::ZipArchive::new(reader).map_err(|e| format!("not a readable zip: {e}"))?;
    for i in 0..archive.len() {
        let mut entry = match archive.by_index(i) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::UnsupportedArchive(_)) => continue,
            Err(e) => return Err(format!("zip entry {i} unreadable: {e}")),
        };
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        io::copy(&mut entry, &mut io::sink())
            .map_err(|e| format!("zip entry {name:?} is damaged: {e}"))?;
    }
    Ok(())
}

/// Bytes received so far: a prefix in the temporary file, then (after a write failed) the
/// rest in memory. `Read + Seek`, for the zip check.
pub struct Assembled {
    file: Option<Arc<std::fs::File>>,
    file_len: u64,
    chunks: Vec<(u64, Bytes)>,
    len: u64,
    pos: u64,
}

impl Assembled {
    pub fn new(
        file: Option<Arc<std::fs::File>>,
        file_len: u64,
        chunks: Vec<(u64, Bytes)>,
        len: u64,
    ) -> Self {
        Self {
            file,
            file_len,
            chunks,
            len,
            pos: 0,
        }
    }
}

/// The chunk of `chunks` (sorted `(offset, bytes)` runs) holding byte `pos`, and where in it.
pub fn chunk_at(chunks: &[(u64, Bytes)], pos: u64) -> Option<(&Bytes, usize)> {
    let i = chunks
        .partition_point(|(start, _)| *start <= pos)
        .checked_sub(1)?;
    let (start, bytes) = &chunks[i];
    let within = usize::try_from(pos - start).ok()?;
    (within < bytes.len()).then_some((bytes, within))
}

impl Read for Assembled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos < self.file_len {
            let Some(file) = &self.file else {
                return Err(io::Error::other("no temporary file"));
            };
            let n = buf
                .len()
                .min(usize::try_from(self.file_len - self.pos).unwrap_or(usize::MAX));
            let n = file.read_at(&mut buf[..n], self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let Some((bytes, within)) = chunk_at(&self.chunks, self.pos) else {
            return Err(io::Error::other("a received chunk is missing"));
        };
        let n = buf.len().min(bytes.len() - within);
        buf[..n].copy_from_slice(&bytes[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Assembled {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

/// The result of reading a stored archive back.
pub struct StoredCheck {
    /// Why it is damaged; `None` when sound.
    pub problem: Option<String>,
    /// Digests of the bytes read, for descriptions that lack them.
    pub sha256: String,
    pub crc32: u32,
}

/// Checks a stored archive file against its description: length, then the strongest digest
/// recorded, then (for a zip without a published sha1) its structure. Blocking; reads the
/// whole file.
pub fn check_stored(file: &mut std::fs::File, stored: &StoredArchive) -> io::Result<StoredCheck> {
    let mut digests = Digests::default();
    let mut len = 0u64;
    let mut buf = vec![0; 256 * 1024];
    file.seek(SeekFrom::Start(0))?;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digests.update(&buf[..n]);
        len += n as u64;
    }
    let (sha1, sha256, crc32) = digests.finish();
    let problem = if len != stored.len {
        Some(format!("{len} bytes, its description says {}", stored.len))
    } else if let Some(expected) = &stored.sha256 {
        (!sha256.eq_ignore_ascii_case(expected))
            .then(|| format!("sha256 {sha256}, {expected} when it was stored"))
    } else if let Some(expected) = stored.sha1.as_ref().or(stored.shasum.as_ref()) {
        (!sha1.eq_ignore_ascii_case(expected))
            .then(|| format!("sha1 {sha1}, {expected} when it was stored"))
    } else {
        None
    };
    let published = stored.had_published_checksum();
    let problem = match problem {
        Some(problem) => Some(problem),
        None if !published && starts_like_zip(file)? => {
            file.seek(SeekFrom::Start(0))?;
            check_zip(&mut *file).err()
        }
        // Stored by a version that checked nothing but the length: its sha1 is of whatever
        // arrived, garbage included. Only a zip's own structure could vouch for it.
        None if !published && stored.sha256.is_none() => Some(
            "stored by an older version without any check, and not a zip that can be checked"
                .into(),
        ),
        None => None,
    };
    Ok(StoredCheck {
        problem,
        sha256,
        crc32,
    })
}

/// The local-file or empty-archive signature zips start with.
fn starts_like_zip(file: &std::fs::File) -> io::Result<bool> {
    let mut magic = [0; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(&magic[..2] == b"PK"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A zip of a few compressible files, as Composer dists are.
    pub(crate) fn sample_zip() -> Vec<u8> {
        let mut out = io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, line) in [("composer.json", "{}\n"), ("src/A.php", "<?php // a\n")] {
            zip.start_file(name, options).expect("start file");
            for _ in 0..200 {
                zip.write_all(line.as_bytes()).expect("write");
            }
        }
        zip.finish().expect("finish");
        out.into_inner()
    }

    fn stored_for(bytes: &[u8], shasum: bool) -> StoredArchive {
        let mut digests = Digests::default();
        digests.update(bytes);
        let (sha1, sha256, crc32) = digests.finish();
        StoredArchive {
            package: "a/b".into(),
            url: "https://example.test/a.zip".into(),
            shasum: shasum.then(|| sha1.clone()),
            md5: None,
            len: bytes.len() as u64,
            sha1: Some(sha1),
            sha256: Some(sha256),
            crc32: Some(crc32),
        }
    }

    fn check_file(bytes: &[u8], stored: &StoredArchive) -> Option<String> {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(bytes).expect("write");
        check_stored(&mut file, stored).expect("readable").problem
    }

    #[test]
    fn a_good_zip_passes_and_damaged_ones_fail_the_structural_check() {
        let good = sample_zip();
        assert_eq!(check_zip(io::Cursor::new(&good)), Ok(()));
        let garbage = vec![0x5a; good.len()];
        assert!(check_zip(io::Cursor::new(&garbage)).is_err());
        let cut = &good[..good.len() / 2];
        assert!(check_zip(io::Cursor::new(cut)).is_err());
        // A flipped byte inside the first entry's deflate stream: a bad CRC or a bad stream.
        let mut flipped = good.clone();
        let name_len = usize::from(u16::from_le_bytes([good[26], good[27]]));
        let extra_len = usize::from(u16::from_le_bytes([good[28], good[29]]));
        flipped[30 + name_len + extra_len + 3] ^= 0xff;
        assert!(check_zip(io::Cursor::new(&flipped)).is_err());
    }

    #[test]
    fn stored_archives_are_checked_by_length_digest_and_structure() {
        let good = sample_zip();
        let stored = stored_for(&good, false);
        assert_eq!(check_file(&good, &stored), None);
        let why = check_file(&good[..good.len() - 1], &stored).expect("short");
        assert!(why.contains("bytes"), "{why}");
        let mut altered = good.clone();
        let middle = altered.len() / 2;
        altered[middle] ^= 1;
        let why = check_file(&altered, &stored).expect("altered");
        assert!(why.starts_with("sha256"), "{why}");
        // An old description (sha1 only) of garbage stored without a shasum: the zip check
        // still finds it, though the sha1 matches the garbage.
        let garbage = vec![b'P'; 300];
        let mut old = stored_for(&garbage, false);
        old.sha256 = None;
        old.crc32 = None;
        let mut garbage_pk = garbage.clone();
        garbage_pk[1] = b'K';
        let mut old_pk = stored_for(&garbage_pk, false);
        old_pk.sha256 = None;
        let why = check_file(&garbage, &old).expect("unverifiable");
        assert!(why.contains("older version"), "{why}");
        let why = check_file(&garbage_pk, &old_pk).expect("looks like a zip, is not");
        assert!(why.contains("zip"), "{why}");
        // A new description of a non-zip without a checksum: its sha256 was recorded after the
        // framing checks, and it matches.
        let tarball = vec![b'x'; 300];
        assert_eq!(check_file(&tarball, &stored_for(&tarball, false)), None);
    }

    #[test]
    fn serve_checks_prefer_crc32_then_sha1() {
        let good = sample_zip();
        let stored = stored_for(&good, true);
        let check = stored.serve_check();
        assert!(matches!(check, ServeCheck::Crc32(_)));
        assert!(ServeHasher::check(&check, &good));
        assert!(!ServeHasher::check(&check, &good[1..]));
        let old = StoredArchive {
            crc32: None,
            sha256: None,
            ..stored
        };
        let check = old.serve_check();
        assert!(matches!(check, ServeCheck::Sha1(_)));
        assert!(ServeHasher::check(&check, &good));
        let mut altered = good.clone();
        altered[10] ^= 1;
        assert!(!ServeHasher::check(&check, &altered));
    }

    #[test]
    fn an_md5_promise_is_checked_and_recorded_without_changing_older_descriptions() {
        let good = sample_zip();
        let md5 = hex::encode(Md5::digest(&good));
        let mut digests = Digests::for_checksum(Some(&Checksum::Md5(md5.clone())));
        digests.update(&good);
        assert_eq!(digests.check(&Checksum::Md5(md5.to_uppercase())), Ok(()));
        let why = digests
            .check(&Checksum::Md5("0".repeat(32)))
            .expect_err("wrong md5");
        assert!(why.starts_with(&format!("md5 {md5}")), "{why}");
        // Without an md5 promise none is computed, so none can match.
        let mut plain = Digests::default();
        plain.update(&good);
        assert!(plain.check(&Checksum::Md5(md5.clone())).is_err());

        let mut stored = stored_for(&good, false);
        let old = serde_json::to_string(&stored).expect("serialises");
        assert!(!old.contains("md5"), "{old}");
        stored.md5 = Some(md5);
        let read: StoredArchive =
            serde_json::from_str(&serde_json::to_string(&stored).expect("json")).expect("reads");
        assert!(read.had_published_checksum());
        let older: StoredArchive = serde_json::from_str(&old).expect("older shape reads");
        assert_eq!(older.md5, None);
        // Verified by its md5 when stored: no zip check, as with a sha1.
        let tarball = vec![b'P'; 300];
        let mut release = stored_for(&tarball, false);
        release.md5 = Some(hex::encode(Md5::digest(&tarball)));
        assert_eq!(check_file(&tarball, &release), None);
    }

    #[test]
    fn assembled_bytes_read_across_the_file_and_memory_parts() {
        let good = sample_zip();
        let split = good.len() / 3;
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&good[..split]).expect("write");
        let rest = Bytes::copy_from_slice(&good[split..]);
        let (a, b) = (rest.slice(..10), rest.slice(10..));
        let chunks = vec![(split as u64, a), (split as u64 + 10, b)];
        let mut assembled = Assembled::new(
            Some(Arc::new(file)),
            split as u64,
            chunks,
            good.len() as u64,
        );
        let mut all = Vec::new();
        assembled.read_to_end(&mut all).expect("read");
        assert_eq!(all, good);
        assembled.seek(SeekFrom::Start(0)).expect("seek");
        assert_eq!(check_zip(assembled), Ok(()));
    }
}
