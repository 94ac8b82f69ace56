//! The report per view of `check`: what each `[[view]]` can install, per account, and what only
//! one of its accounts provides, so an operator sees what a client would lose with that key.
//!
//! It applies the proxy's own rule ([`crate::upstreams::member_names`]) to the listings `check`
//! just read, so the report says what the running proxy would serve: ownership among all
//! upstreams first, then the view's accounts and its `include` / `exclude` patterns.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::report::{UpstreamReport, Verdict};
use crate::config::{NamePattern, ViewConfig};
use crate::upstreams::{member_names, repositories, MemberNames};

/// How many names a text line shows before it says how many more there are; `--json` has
/// them all.
const TEXT_NAMES_SHOWN: usize = 10;

/// What one of a view's upstreams brings into it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reach {
    /// The names of its listing in the view, and of those, the ones no other account of its
    /// repository in the view lists (`None` when another could not be asked).
    Listed {
        names: Vec<String>,
        only_here: Option<Vec<String>>,
    },
    /// It lists no names (packagist.org): any name it serves that no higher upstream owns.
    OpenEnded,
    /// Its listing could not be read: its verdict says why.
    Unreadable,
    /// A higher upstream's listing could not be read, or lists no names, so the owner of some
    /// of its names cannot be told.
    OwnerUnknown,
}

impl Reach {
    /// The reach as a word for `--json`.
    fn code(&self) -> &'static str {
        match self {
            Reach::Listed { .. } => "listed",
            Reach::OpenEnded => "open_ended",
            Reach::Unreadable => "unreadable",
            Reach::OwnerUnknown => "owner_unknown",
        }
    }
}

/// One of a view's upstreams (an account, when its repository has several).
#[derive(Debug)]
pub struct MemberReport {
    pub upstream: String,
    pub url: String,
    pub reach: Reach,
}

/// What one view can install.
#[derive(Debug)]
pub struct ViewReport {
    pub name: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// In the global priority order.
    pub members: Vec<MemberReport>,
}

impl ViewReport {
    /// Every name the members' listings bring (a name two accounts list, once).
    pub fn listed(&self) -> BTreeSet<&str> {
        self.members
            .iter()
            .filter_map(|m| match &m.reach {
                Reach::Listed { names, .. } => Some(names),
                Reach::OpenEnded | Reach::Unreadable | Reach::OwnerUnknown => None,
            })
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// Whether the listed names are all the view can install.
    pub fn complete(&self) -> bool {
        self.members
            .iter()
            .all(|m| matches!(m.reach, Reach::Listed { .. }))
    }
}

/// The report of every view, from the listings in `reports` (every upstream, in priority
/// order).
pub fn reports(views: &[ViewConfig], reports: &[UpstreamReport]) -> Vec<ViewReport> {
    let urls: Vec<&str> = reports.iter().map(|r| r.url.as_str()).collect();
    let repositories = repositories(&urls);
    let roots: Vec<Option<&BTreeSet<String>>> = reports.iter().map(|r| r.names.as_ref()).collect();
    views
        .iter()
        .map(|view| {
            let member = |i: usize| view.upstreams.contains(&reports[i].name);
            let all = member_names(&repositories, &roots, member, |n| view.admits(n));
            let members = all
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
                .map(|(i, brought)| {
                    let report = &reports[i];
                    let reach = match brought {
                        MemberNames::Listed(names) => {
                            // Only accounts of its own repository can bring the same names.
                            let others: Option<Vec<&BTreeSet<&String>>> = repositories
                                .iter()
                                .find(|r| r.contains(&i))
                                .into_iter()
                                .flatten()
                                .filter(|&&j| j != i && member(j))
                                .map(|&j| match &all[j] {
                                    Some(MemberNames::Listed(theirs)) => Some(theirs),
                                    Some(MemberNames::Unlisted | MemberNames::OwnerUnknown)
                                    | None => None,
                                })
                                .collect();
                            Reach::Listed {
                                names: names.iter().map(|n| n.to_string()).collect(),
                                only_here: others.map(|others| {
                                    names
                                        .iter()
                                        .filter(|n| !others.iter().any(|o| o.contains(*n)))
                                        .map(|n| n.to_string())
                                        .collect()
                                }),
                            }
                        }
                        MemberNames::Unlisted if matches!(report.verdict, Verdict::Ok { .. }) => {
                            Reach::OpenEnded
                        }
                        MemberNames::Unlisted => Reach::Unreadable,
                        MemberNames::OwnerUnknown => Reach::OwnerUnknown,
                    };
                    MemberReport {
                        upstream: report.name.clone(),
                        url: report.url.clone(),
                        reach,
                    }
                })
                .collect();
            ViewReport {
                name: view.name.clone(),
                include: patterns(&view.include),
                exclude: patterns(&view.exclude),
                members,
            }
        })
        .collect()
}

fn patterns(patterns: &[NamePattern]) -> Vec<String> {
    patterns.iter().map(|p| p.as_str().to_string()).collect()
}

/// `n package(s): a, b, … and m more`.
fn counted(names: &[String]) -> String {
    let shown: Vec<&str> = names
        .iter()
        .take(TEXT_NAMES_SHOWN)
        .map(String::as_str)
        .collect();
    let more = names.len() - shown.len();
    let plural = if names.len() == 1 { "" } else { "s" };
    match (names.len(), more) {
        (0, _) => "no packages".to_string(),
        (n, 0) => format!("{n} package{plural}: {}", shown.join(", ")),
        (n, more) => format!(
            "{n} package{plural}: {}, … and {more} more",
            shown.join(", ")
        ),
    }
}

/// The text `check` prints for the views.
pub fn text(views: &[ViewReport]) -> String {
    let mut out = String::new();
    for view in views {
        out.push_str(&format!("\nview {} (/{}/)\n", view.name, view.name));
        if !view.include.is_empty() {
            out.push_str(&format!("  include: {}\n", view.include.join(", ")));
        }
        if !view.exclude.is_empty() {
            out.push_str(&format!("  exclude: {}\n", view.exclude.join(", ")));
        }
        let listed = view.listed().len();
        let plural = if listed == 1 { "" } else { "s" };
        let unknown = view
            .members
            .iter()
            .any(|m| matches!(m.reach, Reach::Unreadable | Reach::OwnerUnknown));
        out.push_str(&if view.complete() {
            format!("  can install {listed} package{plural}\n")
        } else if unknown {
            format!("  can install at least {listed} package{plural}; the rest cannot be told (below)\n")
        } else {
            format!(
                "  can install {listed} listed package{plural}, and more from the open-ended \
                 upstreams below\n"
            )
        });
        for member in &view.members {
            let head = format!("  {} ({})", member.upstream, member.url);
            match &member.reach {
                Reach::Listed { names, only_here } => {
                    out.push_str(&format!("{head}: {}\n", counted(names)));
                    out.push_str(&match only_here {
                        Some(only) if !names.is_empty() && only.len() == names.len() => format!(
                            "    only this account provides all of them ({} lost without its key)\n",
                            if only.len() == 1 { "it is" } else { "they are" }
                        ),
                        Some(only) if only.is_empty() => {
                            "    only this account provides: nothing\n".to_string()
                        }
                        Some(only) => {
                            format!("    only this account provides {}\n", counted(only))
                        }
                        None => "    only this account provides: unknown (another account of \
                                 its repository could not be asked)\n"
                            .to_string(),
                    });
                }
                Reach::OpenEnded => out.push_str(&format!(
                    "{head}: any name it serves that no higher upstream owns\n"
                )),
                Reach::Unreadable => out.push_str(&format!(
                    "{head}: unknown: its listing could not be read (see its verdict above)\n"
                )),
                Reach::OwnerUnknown => out.push_str(&format!(
                    "{head}: unknown: a higher upstream's listing could not be read or lists \
                     no names, so the owner of its packages cannot be told\n"
                )),
            }
        }
    }
    out
}

/// The same, for `--json`: every name.
pub fn json(views: &[ViewReport]) -> Value {
    Value::Array(
        views
            .iter()
            .map(|view| {
                let listed = view.listed();
                json!({
                    "name": view.name,
                    "include": view.include,
                    "exclude": view.exclude,
                    // Every name the view can install, when it is a finite list.
                    "packages": view.complete().then_some(listed.len()),
                    "listed_packages": listed.len(),
                    "upstreams": view.members.iter().map(|m| {
                        let (names, only_here) = match &m.reach {
                            Reach::Listed { names, only_here } => (Some(names), only_here.as_ref()),
                            Reach::OpenEnded | Reach::Unreadable | Reach::OwnerUnknown => {
                                (None, None)
                            }
                        };
                        json!({
                            "name": m.upstream,
                            "url": m.url,
                            "reach": m.reach.code(),
                            "packages": names.map(Vec::len),
                            "names": names,
                            "only_this_account": only_here,
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGENTO: &str = "https://repo.magento.com/";

    fn upstream(name: &str, url: &str, verdict: Verdict, names: Option<&[&str]>) -> UpstreamReport {
        UpstreamReport {
            name: name.into(),
            named: true,
            url: url.into(),
            verdict,
            pairs: Vec::new(),
            names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
            advice: Vec::new(),
            only_here: None,
            accounts: Vec::new(),
        }
    }

    fn ok() -> Verdict {
        Verdict::Ok { packages: None }
    }

    fn view(name: &str, upstreams: &[&str], exclude: &[&str]) -> ViewConfig {
        ViewConfig {
            name: name.into(),
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
            include: Vec::new(),
            exclude: exclude
                .iter()
                .map(|p| NamePattern::parse(p).expect("a pattern"))
                .collect(),
        }
    }

    /// An agency's account and a client's (repo.magento.com), a vendor repository that also
    /// lists the agency's extension, and an open-ended packagist.
    fn upstreams() -> Vec<UpstreamReport> {
        vec![
            upstream(
                "agency",
                MAGENTO,
                ok(),
                Some(&["magento/framework", "vendorx/extension-a"]),
            ),
            upstream(
                "client",
                MAGENTO,
                ok(),
                Some(&["magento/framework", "magento/module-m003"]),
            ),
            upstream(
                "hyva",
                "https://hyva.example/",
                ok(),
                Some(&["hyva-themes/theme", "vendorx/extension-a"]),
            ),
            upstream("packagist", "https://repo.packagist.org/", ok(), None),
        ]
    }

    fn member<'a>(view: &'a ViewReport, name: &str) -> &'a Reach {
        &view
            .members
            .iter()
            .find(|m| m.upstream == name)
            .unwrap_or_else(|| panic!("{name} in {view:?}"))
            .reach
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_view_reports_its_packages_per_account_and_what_only_one_account_provides() {
        let views = reports(
            &[
                view("acme", &["agency", "hyva", "packagist"], &[]),
                view("both", &["agency", "client"], &["magento/framework"]),
                view("oss", &["hyva", "packagist"], &[]),
            ],
            &upstreams(),
        );
        let [acme, both, oss] = views.as_slice() else {
            panic!("three views: {views:?}");
        };
        assert_eq!(
            member(acme, "agency"),
            &Reach::Listed {
                names: strings(&["magento/framework", "vendorx/extension-a"]),
                only_here: Some(strings(&["magento/framework", "vendorx/extension-a"])),
            }
        );
        assert_eq!(member(acme, "packagist"), &Reach::OpenEnded);
        assert!(!acme.complete());
        // Two accounts of one repository: each provides alone what the other lacks; the
        // excluded name is in neither.
        assert_eq!(
            member(both, "agency"),
            &Reach::Listed {
                names: strings(&["vendorx/extension-a"]),
                only_here: Some(strings(&["vendorx/extension-a"])),
            }
        );
        assert_eq!(
            member(both, "client"),
            &Reach::Listed {
                names: strings(&["magento/module-m003"]),
                only_here: Some(strings(&["magento/module-m003"])),
            }
        );
        assert!(both.complete());
        // The vendor repository never brings the extension repo.magento.com owns, even into a
        // view without repo.magento.com.
        assert_eq!(
            member(oss, "hyva"),
            &Reach::Listed {
                names: strings(&["hyva-themes/theme"]),
                only_here: Some(strings(&["hyva-themes/theme"])),
            }
        );

        let text = text(&views);
        assert!(
            text.contains(
                "view acme (/acme/)\n  can install 3 listed packages, and more from the \
                 open-ended upstreams below\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  packagist (https://repo.packagist.org/): any name it serves that no higher \
                 upstream owns\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "view both (/both/)\n  exclude: magento/framework\n  can install 2 packages\n  \
                 agency ({MAGENTO}): 1 package: vendorx/extension-a\n    only this account \
                 provides all of them (it is lost without its key)\n"
            )),
            "{text}"
        );

        let json = json(&views);
        assert_eq!(json[1]["name"], "both");
        assert_eq!(json[1]["packages"], 2);
        assert_eq!(json[0]["packages"], Value::Null);
        assert_eq!(json[0]["listed_packages"], 3);
        assert_eq!(json[0]["upstreams"][2]["reach"], "open_ended");
        assert_eq!(json[0]["upstreams"][2]["names"], Value::Null);
        assert_eq!(
            json[1]["upstreams"][1],
            json!({
                "name": "client",
                "url": MAGENTO,
                "reach": "listed",
                "packages": 1,
                "names": ["magento/module-m003"],
                "only_this_account": ["magento/module-m003"],
            })
        );
    }

    #[test]
    fn shared_names_are_no_accounts_alone_and_long_lists_are_cut_in_text_only() {
        let many: Vec<String> = (0..12).map(|i| format!("magento/module-{i:02}")).collect();
        let mut agency: Vec<&str> = many.iter().map(String::as_str).collect();
        agency.push("vendorx/extension-a");
        let reports_in = vec![
            upstream("agency", MAGENTO, ok(), Some(&agency)),
            upstream("client", MAGENTO, ok(), Some(&agency[..12])),
        ];
        let views = reports(&[view("both", &["agency", "client"], &[])], &reports_in);
        let text = text(&views);
        assert!(
            text.contains(
                "agency (https://repo.magento.com/): 13 packages: magento/module-00, \
                 magento/module-01, magento/module-02, magento/module-03, magento/module-04, \
                 magento/module-05, magento/module-06, magento/module-07, magento/module-08, \
                 magento/module-09, … and 3 more\n    only this account provides 1 package: \
                 vendorx/extension-a\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    only this account provides: nothing\n"),
            "{text}"
        );
        let json = json(&views);
        assert_eq!(
            json[0]["upstreams"][0]["names"].as_array().map(Vec::len),
            Some(13)
        );
    }

    #[test]
    fn an_account_that_could_not_be_asked_makes_the_report_unknown_not_empty() {
        let mut upstreams = upstreams();
        upstreams[1].verdict = Verdict::KeysRejected { status: 401 };
        upstreams[1].names = None;
        let views = reports(
            &[view("all", &["agency", "client", "hyva"], &[])],
            &upstreams,
        );
        let all = &views[0];
        assert_eq!(
            member(all, "agency"),
            &Reach::Listed {
                names: strings(&["magento/framework", "vendorx/extension-a"]),
                only_here: None,
            }
        );
        assert_eq!(member(all, "client"), &Reach::Unreadable);
        assert!(text(&views).contains("  can install at least 2 packages; the rest cannot be told"));
        // Whether the client's account owns the vendor's names cannot be told without it.
        assert_eq!(member(all, "hyva"), &Reach::OwnerUnknown);
        let text = text(&views);
        assert!(
            text.contains("only this account provides: unknown"),
            "{text}"
        );
        assert!(
            text.contains(
                "client (https://repo.magento.com/): unknown: its listing could not be read"
            ),
            "{text}"
        );
        assert_eq!(json(&views)[0]["upstreams"][2]["reach"], "owner_unknown");
    }
}
