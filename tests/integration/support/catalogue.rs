//! Deterministic fixture catalogue shaped like repo.magento.com's.
//!
//! The integration tests need a package universe that looks like Magento's (a
//! `product-community-edition` metapackage pinning a framework and many modules, a
//! third-party extension in a second provider listing, dev branches with branch
//! aliases, one package the key is not entitled to) and archives that real Composer
//! can install. Everything here is built in memory from fixed inputs, so two runs (and
//! two mock servers in one test) produce byte-identical metadata, archives and hashes.
//!
//! The mock upstream (`mock_upstream.rs`) turns this into JSON; the Composer harness
//! (`composer.rs`) checks installed files against `FixtureArchive::files`.

use std::io::{Cursor, Write};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};

/// A whole repository's worth of packages, sorted by name.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub packages: Vec<FixturePackage>,
}

#[derive(Debug, Clone)]
pub struct FixturePackage {
    pub name: String,
    /// Which provider listing names this package: "ce" or "ext". Real keys see
    /// several listings, one per entitlement, so the mock serves two.
    pub listing: &'static str,
    pub versions: Vec<FixtureVersion>,
}

#[derive(Debug, Clone)]
pub struct FixtureVersion {
    pub version: String,
    pub version_normalized: String,
    /// "metapackage", "magento2-module", "magento2-library" or "library".
    pub package_type: String,
    pub require: Vec<(String, String)>,
    /// Composer 2 refuses v1 metadata without an integer uid, unique per version.
    pub uid: u64,
    /// None for metapackages, which have nothing to download.
    pub archive: Option<FixtureArchive>,
    /// Emit `"reference": null` in dist (as repo.magento.com does); else a fake 40-hex one.
    pub reference_null: bool,
    /// Emit the archive's sha1 in `dist.shasum`; else `""` (Composer then skips the check).
    pub publish_shasum: bool,
    pub description: String,
    pub license: Vec<String>,
    pub time: String,
    pub autoload: Option<Value>,
    pub extra: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct FixtureArchive {
    pub bytes: Bytes,
    /// Lower-case hex sha1 of `bytes`.
    pub sha1: String,
    /// Relative path inside the installed package directory and its exact contents;
    /// composer.json included.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Version lines of the two fixture "releases" of Magento Open Source.
const RELEASES: [(&str, &str, &str); 2] = [
    // (product version, module version, framework version)
    ("2.4.6", "100.4.6", "103.0.6"),
    ("2.4.7", "100.4.7", "103.0.7"),
];

const DEV_BRANCH: &str = "dev-2.4-develop";
const FRAMEWORK: &str = "magento/framework";
const PRODUCT: &str = "magento/product-community-edition";
const EXTENSION: &str = "vendorx/extension-a";
const NOT_ENTITLED: &str = "magento/module-not-entitled";

impl Catalogue {
    /// Builds the Magento-like catalogue with `modules` modules named
    /// `magento/module-m001`, `magento/module-m002`, ….
    pub fn magento(modules: usize) -> Catalogue {
        Self::magento_with_module_payload(modules, 0)
    }

    /// Like [`Catalogue::magento`], with `payload` bytes of incompressible data in every
    /// module archive (for tests that need the archive store to fill up).
    pub fn magento_with_module_payload(modules: usize, payload: usize) -> Catalogue {
        let mut builder = Builder::default();
        let module_names: Vec<String> = (1..=modules).map(module_name).collect();

        let mut product = Vec::new();
        for (product_version, module_version, framework_version) in RELEASES {
            let mut require = vec![(FRAMEWORK.to_string(), framework_version.to_string())];
            for name in &module_names {
                require.push((name.clone(), module_version.to_string()));
            }
            require.push((EXTENSION.to_string(), "^1.0".to_string()));
            product.push(builder.version(
                PRODUCT,
                VersionSpec {
                    version: product_version,
                    package_type: "metapackage",
                    require,
                    autoload: None,
                    extra: None,
                    blob_len: 0,
                },
            ));
        }

        let framework_autoload = json!({"psr-4": {"Magento\\Framework\\": ""}});
        let mut framework = Vec::new();
        for (index, (_, _, framework_version)) in RELEASES.iter().enumerate() {
            framework.push(builder.version(
                FRAMEWORK,
                VersionSpec {
                    version: framework_version,
                    package_type: "magento2-library",
                    require: vec![("php".to_string(), ">=7.4".to_string())],
                    autoload: Some(framework_autoload.clone()),
                    extra: None,
                    // Incompressible payloads large enough to span many reads/chunks
                    // in every layer between the upstream and Composer.
                    blob_len: [160 * 1024, 256 * 1024][index],
                },
            ));
        }
        framework.push(builder.version(
            FRAMEWORK,
            VersionSpec {
                version: DEV_BRANCH,
                package_type: "magento2-library",
                require: vec![("php".to_string(), ">=7.4".to_string())],
                autoload: Some(framework_autoload),
                extra: Some(json!({"branch-alias": {DEV_BRANCH: "103.0.x-dev"}})),
                blob_len: 0,
            },
        ));

        let mut packages = vec![
            FixturePackage {
                name: PRODUCT.to_string(),
                listing: "ce",
                versions: product,
            },
            FixturePackage {
                name: FRAMEWORK.to_string(),
                listing: "ce",
                versions: framework,
            },
        ];

        for (index, name) in module_names.iter().enumerate() {
            let number = index + 1;
            let namespace = format!("Magento\\ModuleM{number:03}\\");
            let autoload = json!({"psr-4": {namespace: ""}});
            let mut lines: Vec<(&str, &str)> =
                RELEASES.iter().map(|(_, m, _)| (*m, "103.0.*")).collect();
            if number % 10 == 0 {
                lines.push((DEV_BRANCH, "103.0.*"));
            }
            let mut versions = Vec::new();
            for (version, framework_constraint) in lines {
                let mut require = vec![
                    (FRAMEWORK.to_string(), framework_constraint.to_string()),
                    ("php".to_string(), ">=7.4".to_string()),
                ];
                // A short dependency chain, always satisfiable by the sibling
                // module of the same release.
                if number % 7 == 0 {
                    require.push((module_name(number - 1), "^100.4".to_string()));
                }
                versions.push(builder.version(
                    name,
                    VersionSpec {
                        version,
                        package_type: "magento2-module",
                        require,
                        autoload: Some(autoload.clone()),
                        extra: None,
                        blob_len: payload,
                    },
                ));
            }
            packages.push(FixturePackage {
                name: name.clone(),
                listing: "ce",
                versions,
            });
        }

        let extension_versions = ["1.0.0", "1.1.0"]
            .into_iter()
            .map(|version| {
                builder.version(
                    EXTENSION,
                    VersionSpec {
                        version,
                        package_type: "magento2-module",
                        require: vec![
                            (FRAMEWORK.to_string(), "^103.0".to_string()),
                            ("php".to_string(), ">=7.4".to_string()),
                        ],
                        autoload: Some(json!({"psr-4": {"VendorX\\ExtensionA\\": ""}})),
                        extra: None,
                        blob_len: 0,
                    },
                )
            })
            .collect();
        packages.push(FixturePackage {
            name: EXTENSION.to_string(),
            listing: "ext",
            versions: extension_versions,
        });

        let not_entitled = builder.version(
            NOT_ENTITLED,
            VersionSpec {
                version: "1.0.0",
                package_type: "magento2-module",
                require: vec![(FRAMEWORK.to_string(), "103.0.*".to_string())],
                autoload: Some(json!({"psr-4": {"Magento\\NotEntitled\\": ""}})),
                extra: None,
                blob_len: 0,
            },
        );
        packages.push(FixturePackage {
            name: NOT_ENTITLED.to_string(),
            listing: "ce",
            versions: vec![not_entitled],
        });

        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Catalogue { packages }
    }

    pub fn package(&self, name: &str) -> Option<&FixturePackage> {
        self.packages
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.packages[i])
    }

    /// The version of `name` whose `version` (pretty) string is `version`.
    pub fn version(&self, name: &str, version: &str) -> Option<&FixtureVersion> {
        self.package(name)?
            .versions
            .iter()
            .find(|v| v.version == version)
    }

    /// The package whose archive the mock answers with 404 (a missing entitlement).
    pub fn not_entitled_name() -> &'static str {
        NOT_ENTITLED
    }

    /// Upstream path of an archive, repo.magento.com style:
    /// `/archives/magento/framework/magento-framework-103.0.7.0.zip`.
    pub fn archive_path(name: &str, version_normalized: &str) -> String {
        format!(
            "/archives/{name}/{}-{version_normalized}.zip",
            name.replace('/', "-")
        )
    }
}

impl FixtureVersion {
    /// Dev versions are the ones Composer 2 fetches from `~dev.json` metadata files.
    pub fn is_dev(&self) -> bool {
        self.version.starts_with("dev-") || self.version.ends_with("-dev")
    }

    /// The fake VCS reference published when `reference_null` is false.
    pub fn reference(&self, name: &str) -> Option<String> {
        if self.reference_null {
            None
        } else {
            Some(hex::encode(Sha1::digest(
                format!("reference {name} {}", self.version).as_bytes(),
            )))
        }
    }

    /// The version object as the repository publishes it, with `dist.url` set to
    /// `archive_url` (the mock fills in its own absolute URL).
    pub fn metadata(&self, name: &str, archive_url: &str) -> Value {
        let mut object = Map::new();
        object.insert("name".into(), json!(name));
        object.insert("description".into(), json!(self.description));
        object.insert("type".into(), json!(self.package_type));
        object.insert("version".into(), json!(self.version));
        object.insert("version_normalized".into(), json!(self.version_normalized));
        object.insert("license".into(), json!(self.license));
        object.insert("time".into(), json!(self.time));
        object.insert("require".into(), require_object(&self.require));
        if let Some(autoload) = &self.autoload {
            object.insert("autoload".into(), autoload.clone());
        }
        if let Some(extra) = &self.extra {
            object.insert("extra".into(), extra.clone());
        }
        if let Some(archive) = &self.archive {
            let shasum = if self.publish_shasum {
                archive.sha1.clone()
            } else {
                String::new()
            };
            object.insert(
                "dist".into(),
                json!({
                    "type": "zip",
                    "url": archive_url,
                    "reference": self.reference(name),
                    "shasum": shasum,
                }),
            );
        }
        object.insert("uid".into(), json!(self.uid));
        Value::Object(object)
    }
}

fn module_name(number: usize) -> String {
    format!("magento/module-m{number:03}")
}

fn require_object(require: &[(String, String)]) -> Value {
    Value::Object(
        require
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

struct VersionSpec<'a> {
    version: &'a str,
    package_type: &'a str,
    require: Vec<(String, String)>,
    autoload: Option<Value>,
    extra: Option<Value>,
    /// Bytes of pseudo-random payload to add as `data/blob.bin` (0: none).
    blob_len: usize,
}

/// Hands out uids and the per-version flags in construction order, so that both
/// `reference_null` and `publish_shasum` take both values often.
#[derive(Default)]
struct Builder {
    index: u64,
    /// Which repository the package comes from, added to descriptions (and so to each
    /// archive's composer.json) so that one name in two repositories has different bytes.
    /// Empty for the Magento catalogue, whose bytes stay as they always were.
    origin: &'static str,
}

impl Builder {
    fn version(&mut self, name: &str, spec: VersionSpec<'_>) -> FixtureVersion {
        let index = self.index;
        self.index += 1;
        let version_normalized = normalize(spec.version);
        let description = if self.origin.is_empty() {
            format!("Fixture package {name} ({})", spec.version)
        } else {
            format!(
                "Fixture package {name} ({}) from {}",
                spec.version, self.origin
            )
        };
        let license = vec!["OSL-3.0".to_string(), "AFL-3.0".to_string()];
        // Fixed, distinct, plausible release times.
        let time = format!(
            "2024-{:02}-{:02}T{:02}:{:02}:00+00:00",
            1 + index % 12,
            1 + index % 28,
            index % 24,
            index % 60
        );
        let archive = (spec.package_type != "metapackage").then(|| {
            build_archive(
                name,
                spec.version,
                spec.package_type,
                &description,
                &license,
                &spec.require,
                spec.autoload.as_ref(),
                spec.extra.as_ref(),
                spec.blob_len,
            )
        });
        FixtureVersion {
            version: spec.version.to_string(),
            version_normalized,
            package_type: spec.package_type.to_string(),
            require: spec.require,
            uid: 7_000_000 + index,
            archive,
            reference_null: index.is_multiple_of(2),
            publish_shasum: index % 3 != 2,
            description,
            license,
            time,
            autoload: spec.autoload,
            extra: spec.extra,
        }
    }
}

/// Composer's normalisation for the only shapes the catalogue uses:
/// "x.y.z" → "x.y.z.0"; branches stay as they are.
fn normalize(version: &str) -> String {
    if version.starts_with("dev-") {
        version.to_string()
    } else {
        format!("{version}.0")
    }
}

#[allow(clippy::too_many_arguments)]
fn build_archive(
    name: &str,
    version: &str,
    package_type: &str,
    description: &str,
    license: &[String],
    require: &[(String, String)],
    autoload: Option<&Value>,
    extra: Option<&Value>,
    blob_len: usize,
) -> FixtureArchive {
    // Like real Magento archives: the package's own composer.json without "version"
    // (a dist's composer.json must not contradict the repository metadata).
    let mut manifest = Map::new();
    manifest.insert("name".into(), json!(name));
    manifest.insert("description".into(), json!(description));
    manifest.insert("type".into(), json!(package_type));
    manifest.insert("license".into(), json!(license));
    manifest.insert("require".into(), require_object(require));
    if let Some(autoload) = autoload {
        manifest.insert("autoload".into(), autoload.clone());
    }
    if let Some(extra) = extra {
        manifest.insert("extra".into(), extra.clone());
    }
    let mut composer_json =
        serde_json::to_vec_pretty(&Value::Object(manifest)).expect("serialising a Value");
    composer_json.push(b'\n');

    let component = name.replace('/', "_");
    let registration = format!(
        "<?php\n// Fixture for {name} {version}\n\\Magento\\Framework\\Component\\ComponentRegistrar::register(\n    \\Magento\\Framework\\Component\\ComponentRegistrar::MODULE,\n    '{component}',\n    __DIR__\n);\n"
    );
    let fixture =
        format!("fixture {name} {version}\nthis text is unique to this package version\n");

    let mut files = vec![
        ("composer.json".to_string(), composer_json),
        ("registration.php".to_string(), registration.into_bytes()),
        ("FIXTURE.txt".to_string(), fixture.into_bytes()),
    ];
    if blob_len > 0 {
        files.push((
            "data/blob.bin".to_string(),
            pseudo_random(&format!("{name} {version}"), blob_len),
        ));
    }

    let bytes = zip_files(&files);
    let sha1 = hex::encode(Sha1::digest(&bytes));
    FixtureArchive {
        bytes: Bytes::from(bytes),
        sha1,
        files,
    }
}

/// A zip with every entry at the root (no top-level folder, like repo.magento.com's)
/// and fixed timestamps and permissions, so the bytes (and sha1) never change.
fn zip_files(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let timestamp = zip::DateTime::from_date_and_time(2024, 1, 2, 3, 4, 6)
        .expect("a valid fixed DOS timestamp");
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(timestamp)
        .unix_permissions(0o644);
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (path, contents) in files {
        writer
            .start_file(path.as_str(), options)
            .expect("starting a zip entry in memory");
        writer
            .write_all(contents)
            .expect("writing a zip entry in memory");
    }
    writer
        .finish()
        .expect("finishing an in-memory zip")
        .into_inner()
}

/// Seeded xorshift64* output: incompressible, so deflate cannot shrink the archive.
fn pseudo_random(seed: &str, len: usize) -> Vec<u8> {
    let digest = Sha1::digest(seed.as_bytes());
    let mut state = digest[..8]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Catalogue {
    /// `magento(modules)` plus one package `bench/blob-<n>` per entry of `blob_lens`, each
    /// with a single version `1.0.0` whose archive holds `n` incompressible bytes (plus the
    /// few hundred bytes of zip overhead and small files). Benchmarks need archives of
    /// chosen sizes; no Magento package requires these, so installs are unaffected.
    pub fn with_sized_archives(modules: usize, blob_lens: &[usize]) -> Catalogue {
        let mut catalogue = Catalogue::magento(modules);
        // Continue the uid sequence after the versions already built, so uids stay unique.
        let mut builder = Builder {
            index: catalogue
                .packages
                .iter()
                .map(|p| p.versions.len() as u64)
                .sum(),
            ..Builder::default()
        };
        for &blob_len in blob_lens {
            let name = format!("bench/blob-{blob_len}");
            let version = builder.version(
                &name,
                VersionSpec {
                    version: "1.0.0",
                    package_type: "library",
                    require: vec![("php".to_string(), ">=7.4".to_string())],
                    autoload: None,
                    extra: None,
                    blob_len,
                },
            );
            catalogue.packages.push(FixturePackage {
                name,
                listing: "ce",
                versions: vec![version],
            });
        }
        catalogue.packages.sort_by(|a, b| a.name.cmp(&b.name));
        catalogue
    }
}

/// A version's requirements: (name, constraint) pairs.
#[allow(dead_code)] // Only `dev_tooling` uses it.
type Requires<'a> = &'a [(&'a str, &'a str)];

/// One package of a small catalogue: name, type, and its versions with their requirements.
struct PackageSpec<'a> {
    name: &'a str,
    package_type: &'a str,
    versions: &'a [(&'a str, &'a [(&'a str, &'a str)])],
}

/// Uids of the small catalogues start here, clear of the Magento catalogue's.
const VENDOR_FIRST_INDEX: u64 = 50_000;
const PACKAGIST_FIRST_INDEX: u64 = 60_000;

impl Catalogue {
    /// What a vendor's Private Packagist repository (Hyvä's) serves: a theme module and a
    /// theme that requires it and `psr/log` (a name only packagist.org has), so a project
    /// resolving the theme needs both repositories.
    pub fn vendor() -> Catalogue {
        Self::small(
            "the vendor repository",
            VENDOR_FIRST_INDEX,
            &[
                PackageSpec {
                    name: "hyva-themes/magento2-theme-module",
                    package_type: "magento2-module",
                    versions: &[
                        ("1.3.5", &[("php", ">=7.4")]),
                        ("1.3.6", &[("php", ">=7.4")]),
                    ],
                },
                PackageSpec {
                    name: "hyva-themes/magento2-default-theme",
                    package_type: "magento2-theme",
                    versions: &[(
                        "1.3.6",
                        &[
                            ("hyva-themes/magento2-theme-module", "^1.3.6"),
                            ("psr/log", "^3.0"),
                        ],
                    )],
                },
            ],
        )
    }

    /// What packagist.org serves for a Magento project, in miniature: libraries, a
    /// `magento/` name that repo.magento.com does not list (ownership is per name, not per
    /// vendor), a dev branch, and `vendorx/extension-a`, which the Magento catalogue also
    /// has: here with other bytes for 1.1.0 and a higher 1.2.0, so a test can tell which
    /// repository an install came from. Every version has a VCS reference and no shasum,
    /// as packagist.org publishes GitHub dists.
    pub fn packagist() -> Catalogue {
        let mut catalogue = Self::small(
            "packagist",
            PACKAGIST_FIRST_INDEX,
            &[
                PackageSpec {
                    name: "psr/log",
                    package_type: "library",
                    versions: &[
                        ("1.1.4", &[("php", ">=5.3.0")]),
                        ("3.0.0", &[("php", ">=8.0.0")]),
                        ("dev-master", &[("php", ">=8.0.0")]),
                    ],
                },
                PackageSpec {
                    name: "symfony/polyfill-php80",
                    package_type: "library",
                    versions: &[
                        ("1.28.0", &[("php", ">=7.1")]),
                        ("1.29.0", &[("php", ">=7.1")]),
                    ],
                },
                PackageSpec {
                    name: "laminas/laminas-stdlib",
                    package_type: "library",
                    versions: &[
                        (
                            "3.18.0",
                            &[("php", ">=7.4"), ("symfony/polyfill-php80", "^1.28")],
                        ),
                        (
                            "3.19.0",
                            &[("php", ">=7.4"), ("symfony/polyfill-php80", "^1.28")],
                        ),
                    ],
                },
                PackageSpec {
                    name: "magento/magento-composer-installer",
                    package_type: "library",
                    versions: &[("0.4.0", &[("php", ">=7.4")])],
                },
                PackageSpec {
                    name: EXTENSION,
                    package_type: "magento2-module",
                    versions: &[
                        ("1.1.0", &[("psr/log", "^3.0")]),
                        ("1.2.0", &[("psr/log", "^3.0")]),
                    ],
                },
            ],
        );
        for version in catalogue.packages.iter_mut().flat_map(|p| &mut p.versions) {
            version.reference_null = false;
            version.publish_shasum = false;
        }
        catalogue
    }

    /// `count` libraries as packagist.org publishes them (`tooling/lib-000` …), each with two
    /// tagged releases and a `dev-main` branch, GitHub references and no shasum: enough of them
    /// to exceed what GitHub's API gives an unauthenticated address in an hour.
    pub fn packagist_libraries(count: usize) -> Catalogue {
        const VERSIONS: &[(&str, &[(&str, &str)])] = &[
            ("1.0.0", &[("php", ">=7.4")]),
            ("1.1.0", &[("php", ">=7.4")]),
            ("dev-main", &[("php", ">=8.1")]),
        ];
        let names: Vec<String> = (0..count).map(|i| format!("tooling/lib-{i:03}")).collect();
        let specs: Vec<PackageSpec<'_>> = names
            .iter()
            .map(|name| PackageSpec {
                name,
                package_type: "library",
                versions: VERSIONS,
            })
            .collect();
        let mut catalogue = Self::small("packagist", PACKAGIST_FIRST_INDEX + 1_000, &specs);
        for version in catalogue.packages.iter_mut().flat_map(|p| &mut p.versions) {
            version.reference_null = false;
            version.publish_shasum = false;
        }
        catalogue
    }

    /// A dev-tooling install as packagist.org serves it: phpunit/phpunit 11.5 and its whole
    /// dependency tree (27 packages), real names, two releases each with the constraints
    /// those releases declare (`ext-*` requirements left out: only `php`, which every PHP
    /// 8.2+ satisfies), GitHub references and no shasum. A project requiring
    /// `phpunit/phpunit` resolves the tree three levels deep, as the real one does.
    #[allow(dead_code)] // Only the benchmark's mock (examples/mock_upstream.rs) uses it.
    pub fn dev_tooling() -> Catalogue {
        const PHP82: (&str, &str) = ("php", ">=8.2");
        const PHP72: (&str, &str) = ("php", "^7.2 || ^8.0");
        const PARSER: (&str, &str) = ("nikic/php-parser", "^5.0");
        const REFLECTOR: (&str, &str) = ("sebastian/object-reflector", "^4.0");
        const RECURSION: (&str, &str) = ("sebastian/recursion-context", "^6.0");
        const PHPUNIT: &[(&str, &str)] = &[
            PHP82,
            ("myclabs/deep-copy", "^1.12.1"),
            ("phar-io/manifest", "^2.0.4"),
            ("phar-io/version", "^3.2.1"),
            ("phpunit/php-code-coverage", "^11.0.9"),
            ("phpunit/php-file-iterator", "^5.1.0"),
            ("phpunit/php-invoker", "^5.0.1"),
            ("phpunit/php-text-template", "^4.0.1"),
            ("phpunit/php-timer", "^7.0.1"),
            ("sebastian/cli-parser", "^3.0.2"),
            ("sebastian/code-unit", "^3.0.3"),
            ("sebastian/comparator", "^6.3.1"),
            ("sebastian/diff", "^6.0.2"),
            ("sebastian/environment", "^7.2.0"),
            ("sebastian/exporter", "^6.3.0"),
            ("sebastian/global-state", "^7.0.2"),
            ("sebastian/object-enumerator", "^6.0.1"),
            ("sebastian/type", "^5.1.2"),
            ("sebastian/version", "^5.0.2"),
            ("staabm/side-effects-detector", "^1.0.5"),
        ];
        const COVERAGE: &[(&str, &str)] = &[
            PHP82,
            ("nikic/php-parser", "^5.4.0"),
            ("phpunit/php-file-iterator", "^5.1.0"),
            ("phpunit/php-text-template", "^4.0.1"),
            ("sebastian/code-unit-reverse-lookup", "^4.0.1"),
            ("sebastian/complexity", "^4.0.1"),
            ("sebastian/environment", "^7.2.0"),
            ("sebastian/lines-of-code", "^3.0.1"),
            ("sebastian/version", "^5.0.2"),
            ("theseer/tokenizer", "^1.2.3"),
        ];
        let releases: &[(&str, &[&str], Requires<'_>)] = &[
            ("phpunit/phpunit", &["11.5.12", "11.5.15"], PHPUNIT),
            (
                "myclabs/deep-copy",
                &["1.12.1", "1.13.0"],
                &[("php", "^7.1 || ^8.0")],
            ),
            ("nikic/php-parser", &["5.4.0", "5.5.0"], &[("php", ">=7.4")]),
            (
                "phar-io/manifest",
                &["2.0.3", "2.0.4"],
                &[PHP72, ("phar-io/version", "^3.0.1")],
            ),
            ("phar-io/version", &["3.2.0", "3.2.1"], &[PHP72]),
            (
                "phpunit/php-code-coverage",
                &["11.0.9", "11.0.10"],
                COVERAGE,
            ),
            ("phpunit/php-file-iterator", &["5.0.1", "5.1.0"], &[PHP82]),
            ("phpunit/php-invoker", &["5.0.0", "5.0.1"], &[PHP82]),
            ("phpunit/php-text-template", &["4.0.0", "4.0.1"], &[PHP82]),
            ("phpunit/php-timer", &["7.0.0", "7.0.1"], &[PHP82]),
            ("sebastian/cli-parser", &["3.0.1", "3.0.2"], &[PHP82]),
            ("sebastian/code-unit", &["3.0.2", "3.0.3"], &[PHP82]),
            (
                "sebastian/code-unit-reverse-lookup",
                &["4.0.0", "4.0.1"],
                &[PHP82],
            ),
            (
                "sebastian/comparator",
                &["6.3.0", "6.3.1"],
                &[
                    PHP82,
                    ("sebastian/diff", "^6.0"),
                    ("sebastian/exporter", "^6.0"),
                ],
            ),
            (
                "sebastian/complexity",
                &["4.0.0", "4.0.1"],
                &[PHP82, PARSER],
            ),
            ("sebastian/diff", &["6.0.1", "6.0.2"], &[PHP82]),
            ("sebastian/environment", &["7.2.0", "7.2.1"], &[PHP82]),
            (
                "sebastian/exporter",
                &["6.3.0", "6.3.2"],
                &[PHP82, RECURSION],
            ),
            (
                "sebastian/global-state",
                &["7.0.1", "7.0.2"],
                &[PHP82, REFLECTOR, RECURSION],
            ),
            (
                "sebastian/lines-of-code",
                &["3.0.0", "3.0.1"],
                &[PHP82, PARSER],
            ),
            (
                "sebastian/object-enumerator",
                &["6.0.0", "6.0.1"],
                &[PHP82, REFLECTOR, RECURSION],
            ),
            ("sebastian/object-reflector", &["4.0.0", "4.0.1"], &[PHP82]),
            ("sebastian/recursion-context", &["6.0.1", "6.0.2"], &[PHP82]),
            ("sebastian/type", &["5.1.0", "5.1.2"], &[PHP82]),
            ("sebastian/version", &["5.0.1", "5.0.2"], &[PHP82]),
            (
                "staabm/side-effects-detector",
                &["1.0.4", "1.0.5"],
                &[("php", "^7.4 || ^8.0")],
            ),
            ("theseer/tokenizer", &["1.2.2", "1.2.3"], &[PHP72]),
        ];
        let versions: Vec<Vec<(&str, Requires<'_>)>> = releases
            .iter()
            .map(|(_, versions, require)| versions.iter().map(|v| (*v, *require)).collect())
            .collect();
        let specs: Vec<PackageSpec<'_>> = releases
            .iter()
            .zip(&versions)
            .map(|((name, _, _), versions)| PackageSpec {
                name,
                package_type: "library",
                versions,
            })
            .collect();
        let mut catalogue = Self::small("packagist", PACKAGIST_FIRST_INDEX + 2_000, &specs);
        for version in catalogue.packages.iter_mut().flat_map(|p| &mut p.versions) {
            version.reference_null = false;
            version.publish_shasum = false;
        }
        catalogue
    }

    /// A catalogue of small archives in one listing ("ce"); a dev branch is aliased to `3.x-dev`.
    fn small(origin: &'static str, first_index: u64, specs: &[PackageSpec<'_>]) -> Catalogue {
        let mut builder = Builder {
            index: first_index,
            origin,
        };
        let mut packages: Vec<FixturePackage> = specs
            .iter()
            .map(|spec| FixturePackage {
                name: spec.name.to_string(),
                listing: "ce",
                versions: spec
                    .versions
                    .iter()
                    .map(|(version, require)| {
                        let namespace = spec
                            .name
                            .split(['/', '-'])
                            .map(|word| {
                                let mut chars = word.chars();
                                chars.next().map_or(String::new(), |first| {
                                    first.to_ascii_uppercase().to_string() + chars.as_str()
                                })
                            })
                            .collect::<String>();
                        let extra = version
                            .starts_with("dev-")
                            .then(|| json!({"branch-alias": {*version: "3.x-dev"}}));
                        builder.version(
                            spec.name,
                            VersionSpec {
                                version,
                                package_type: spec.package_type,
                                require: require
                                    .iter()
                                    .map(|(n, c)| (n.to_string(), c.to_string()))
                                    .collect(),
                                autoload: Some(json!({"psr-4": {format!("{namespace}\\"): ""}})),
                                extra,
                                blob_len: 0,
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        Catalogue { packages }
    }
}
