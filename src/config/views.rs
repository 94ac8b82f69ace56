//! `[[view]]` tables: what one client (an agency's customer, a team) may see. Each names the
//! `[[upstream]]` tables (accounts included) it draws from, and optionally `include` /
//! `exclude` package-name patterns with `*` wildcards, as Composer's own repository `only` /
//! `exclude` options take them. Checked against the upstreams here, so a typo stops the start
//! instead of quietly serving an empty repository.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{ConfigError, UpstreamConfig};

/// One `[[view]]` table as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawView {
    name: String,
    upstreams: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

/// A package-name pattern: literal text with `*` matching any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        let valid = !pattern.is_empty()
            && pattern.len() <= 256
            && pattern.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'/' | b'-' | b'_' | b'.' | b'*')
            });
        if valid {
            Ok(Self(pattern.to_string()))
        } else {
            Err(format!(
                "{pattern:?} is not a package-name pattern: lower-case letters, digits, '/', \
                 '-', '_', '.' and '*' for any run of characters"
            ))
        }
    }

    /// Whether `name` matches. Case-insensitive, as Composer's package names are.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*`: the whole name.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One view, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewConfig {
    /// Served at `<public_url>/<name>/`; unique across upstreams and views.
    pub name: String,
    /// Names of `[[upstream]]` tables, in the order written.
    pub upstreams: Vec<String>,
    /// Empty: every name.
    pub include: Vec<NamePattern>,
    pub exclude: Vec<NamePattern>,
}

impl ViewConfig {
    /// Whether `name` passes the view's `include` and `exclude` patterns.
    pub fn admits(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(name)))
            && !self.exclude.iter().any(|p| p.matches(name))
    }
}

/// The views, checked against the upstreams and the router's own words.
pub(super) fn views(
    raw: &[RawView],
    upstreams: &[UpstreamConfig],
    route_words: &[&str],
    origin: &str,
) -> Result<Vec<ViewConfig>, ConfigError> {
    let err = |setting: String, message: String| ConfigError {
        setting,
        origin: origin.to_string(),
        message,
    };
    if !raw.is_empty() && upstreams.iter().any(|u| !u.named) {
        return Err(err(
            "view".into(),
            "[[view]] tables name [[upstream]] tables; the flat upstream settings have none".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut list = Vec::with_capacity(raw.len());
    for view in raw {
        let name = view.name.as_str();
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(err(
                "view.name".into(),
                format!("{name:?} must be 1 to 32 characters of a-z, 0-9 and -"),
            ));
        }
        if route_words.contains(&name) {
            return Err(err(
                format!("view.{name}.name"),
                format!("{name:?} is a path the proxy serves itself; choose another name"),
            ));
        }
        if upstreams.iter().any(|u| u.name == name) {
            return Err(err(
                format!("view.{name}.name"),
                format!(
                    "{name:?} names both a [[view]] and an [[upstream]] table: both are served \
                     at <public_url>/{name}/, so each needs a name of its own"
                ),
            ));
        }
        if !seen.insert(name) {
            return Err(err(
                format!("view.{name}.name"),
                format!("{name:?} names two [[view]] tables"),
            ));
        }
        if view.upstreams.is_empty() {
            return Err(err(
                format!("view.{name}.upstreams"),
                "must name at least one [[upstream]] table".into(),
            ));
        }
        for upstream in &view.upstreams {
            if !upstreams.iter().any(|u| &u.name == upstream) {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                return Err(err(
                    format!("view.{name}.upstreams"),
                    format!(
                        "view {name:?} names upstream {upstream:?}, which is not an \
                         [[upstream]] table (there are: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        let patterns = |field: &str, list: &[String]| {
            list.iter()
                .map(|p| NamePattern::parse(p).map_err(|m| err(format!("view.{name}.{field}"), m)))
                .collect::<Result<Vec<_>, _>>()
        };
        list.push(ViewConfig {
            name: name.to_string(),
            upstreams: view.upstreams.clone(),
            include: patterns("include", &view.include)?,
            exclude: patterns("exclude", &view.exclude)?,
        });
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> NamePattern {
        NamePattern::parse(p).expect("valid pattern")
    }

    #[test]
    fn patterns_match_as_composers_only_and_exclude_do() {
        assert!(pattern("magento/*").matches("magento/framework"));
        assert!(pattern("magento/*").matches("Magento/Framework"));
        assert!(!pattern("magento/*").matches("amasty/magento"));
        assert!(pattern("*/module-*").matches("magento/module-catalog"));
        assert!(!pattern("*/module-*").matches("magento/framework"));
        assert!(pattern("vendorx/extension-a").matches("vendorx/extension-a"));
        assert!(!pattern("vendorx/extension-a").matches("vendorx/extension-ab"));
        assert!(pattern("*").matches("anything/at-all"));
        assert!(pattern("a*a").matches("a/a"));
        assert!(!pattern("ab*ba").matches("aba"), "the ends may not overlap");
        assert!(pattern("a*b*c").matches("a/xbxc"));
        assert!(!pattern("a*b*c").matches("a/xcxb"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(NamePattern::parse("").is_err());
        assert!(NamePattern::parse("Magento/*").is_err());
        assert!(NamePattern::parse("magento/[a-z]").is_err());
    }

    fn load(views: &str) -> Result<crate::config::Config, ConfigError> {
        let text = format!(
            "[[upstream]]\nname = \"magento\"\nurl = \"https://repo.example\"\n\n\
             [[upstream]]\nname = \"packagist\"\nurl = \"https://packagist.example\"\n\n{views}"
        );
        crate::config::Config::load(&crate::config::Sources {
            file: Some(("composer-proxy.toml".into(), text)),
            env: Default::default(),
        })
    }

    #[test]
    fn views_load_with_their_upstreams_and_patterns() {
        let config = load(
            "[[view]]\nname = \"acme\"\nupstreams = [\"magento\"]\ninclude = [\"magento/*\"]\n",
        )
        .expect("valid");
        assert_eq!(config.views.len(), 1);
        assert_eq!(config.views[0].upstreams, ["magento"]);
        assert!(config.views[0].admits("magento/framework"));
        assert!(!config.views[0].admits("psr/log"));
        assert!(load("").expect("no views").views.is_empty());
    }

    #[test]
    fn a_bad_view_names_the_setting_and_what_it_clashes_with() {
        let e = load("[[view]]\nname = \"acme\"\nupstreams = [\"magneto\"]\n")
            .expect_err("unknown upstream");
        assert_eq!(e.setting, "view.acme.upstreams");
        assert!(e.message.contains("\"magneto\""), "{}", e.message);
        assert!(e.message.contains("magento, packagist"), "{}", e.message);

        let e =
            load("[[view]]\nname = \"packagist\"\nupstreams = [\"magento\"]\n").expect_err("clash");
        assert_eq!(e.setting, "view.packagist.name");
        assert!(e.message.contains("[[upstream]]"), "{}", e.message);

        let e = load("[[view]]\nname = \"status\"\nupstreams = [\"magento\"]\n")
            .expect_err("route word");
        assert!(e.message.contains("path the proxy serves"), "{}", e.message);

        let e = load(
            "[[view]]\nname = \"a\"\nupstreams = [\"magento\"]\n[[view]]\nname = \"a\"\nupstreams = [\"magento\"]\n",
        )
        .expect_err("twice");
        assert!(e.message.contains("two [[view]]"), "{}", e.message);

        let e = load("[[view]]\nname = \"a\"\nupstreams = []\n").expect_err("empty");
        assert_eq!(e.setting, "view.a.upstreams");

        let e = load("[[view]]\nname = \"a\"\nupstreams = [\"magento\"]\nexclude = [\"A/*\"]\n")
            .expect_err("bad pattern");
        assert_eq!(e.setting, "view.a.exclude");

        let e = crate::config::Config::load(&crate::config::Sources {
            file: Some(("composer-proxy.toml".into(), "view = \"acme\"\n".into())),
            env: Default::default(),
        })
        .expect_err("not tables");
        assert!(e.message.contains("[[view]]"), "{}", e.message);
    }

    #[test]
    fn include_and_exclude_decide_together() {
        let view = ViewConfig {
            name: "acme".into(),
            upstreams: vec!["magento".into()],
            include: vec![pattern("magento/*"), pattern("acme/*")],
            exclude: vec![pattern("magento/module-b2b*")],
        };
        assert!(view.admits("magento/framework"));
        assert!(view.admits("acme/theme"));
        assert!(!view.admits("psr/log"));
        assert!(!view.admits("magento/module-b2b-quote"));
        let open = ViewConfig {
            include: Vec::new(),
            ..view
        };
        assert!(open.admits("psr/log"));
    }
}
