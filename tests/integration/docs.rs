//! The documentation against the code, so it cannot drift: every relative link in README.md and
//! docs/ resolves to a file and heading, every command of `composer-proxy --help` has its
//! section, and docs/troubleshooting.md has every warning and error the proxy logs. (The
//! configuration reference and the client warnings are checked by lib tests, beside the
//! parser and `ProxyError`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every chapter in docs/.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut chapters: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    chapters.sort();
    files.extend(chapters);
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of a Markdown document outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// A line without its inline code spans, whose brackets are not links.
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join("")
}

/// The text of a heading line (`## …`), if it is one.
fn heading(line: &str) -> Option<&str> {
    let text = line.trim_start_matches('#');
    (text.len() < line.len() && text.starts_with(' ')).then(|| text.trim())
}

/// GitHub's anchor for a heading: its text as rendered (code spans' contents, links' text),
/// lower case, without punctuation but `-` and `_`, spaces as `-`.
fn slug(heading: &str) -> String {
    let mut rendered = String::new();
    let mut rest = heading;
    // `[text](target)` renders as its text.
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        rendered.push_str(&rest[..open]);
        rendered.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    rendered.push_str(rest);
    rendered
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a document has: its headings' slugs (a repeated one gets `-1`, `-2`, … as on
/// GitHub) and explicit `<a id="…">` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in prose(text) {
        if let Some(text) = heading(line) {
            let base = slug(text);
            let mut candidate = base.clone();
            let mut n = 0;
            while found.contains(&candidate) {
                n += 1;
                candidate = format!("{base}-{n}");
            }
            found.insert(candidate);
        }
        let mut rest = line;
        while let Some(at) = rest.find("<a id=\"") {
            rest = &rest[at + 7..];
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_string());
            }
        }
    }
    found
}

/// The targets of the Markdown links and images on a line (outside code spans).
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].trim().to_string());
        }
    }
    targets
}

#[test]
fn every_relative_link_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for document in documents() {
        let text = read(&document);
        let name = document.strip_prefix(root()).expect("in the repository");
        let mut fenced = false;
        for (number, line) in text.lines().enumerate() {
            // Links in fenced code are code, not links.
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    document.clone()
                } else {
                    document.parent().expect("a directory").join(path)
                };
                let at = format!("{}:{}: {target}", name.display(), number + 1);
                if !file.exists() {
                    broken.push(format!("{at}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let is_markdown = file.extension().is_some_and(|e| e == "md");
                    if !is_markdown || !anchors(&read(&file)).contains(anchor) {
                        broken.push(format!("{at}: no heading with that anchor"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the link syntax still read?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The subcommands `composer-proxy <path> --help` lists, `help` aside.
fn subcommands(path: &[String]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{path:?} --help: {out:?}");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_command_has_its_section() {
    let mut headings = BTreeSet::new();
    for document in documents() {
        for line in prose(&read(&document)) {
            if let Some(text) = heading(line) {
                headings.insert(text.replace('`', ""));
            }
        }
    }
    let mut commands = Vec::new();
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        for name in subcommands(&path) {
            let mut sub = path.clone();
            sub.push(name);
            commands.push(sub.join(" "));
            queue.push(sub);
        }
    }
    assert!(
        commands.iter().any(|c| c == "tokens create"),
        "nested commands not read: {commands:?}"
    );
    let missing: Vec<String> = commands
        .into_iter()
        .map(|command| format!("composer-proxy {command}"))
        .filter(|heading| !headings.contains(heading))
        .collect();
    assert!(
        missing.is_empty(),
        "commands without a section (a heading `composer-proxy <command>` in docs/): {missing:?}"
    );
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The arguments of a macro call starting after its `(`, up to the matching `)`, as the
/// string literals at its top level (with whether each is a field's value, `key = "…"`) and
/// the whole text. Literals nested in brackets (`format!(…)`, `if … { "…" }`) are left out:
/// they are values, not the message.
fn macro_arguments(code: &str) -> (Vec<(bool, String)>, &str) {
    let bytes = code.as_bytes();
    let (mut depth, mut i) = (1usize, 0usize);
    let mut literals = Vec::new();
    while depth > 0 {
        match bytes[i] {
            b'"' => {
                let is_value = code[..i].trim_end().ends_with('=');
                let mut text = String::new();
                i += 1;
                while bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        if bytes[i + 1] == b'\n' {
                            // A continued line: the break and the next line's indent vanish.
                            i += 2;
                            while matches!(bytes[i], b' ' | b'\t') {
                                i += 1;
                            }
                            continue;
                        }
                        text.push(char::from(bytes[i + 1]));
                        i += 2;
                        continue;
                    }
                    let c = code[i..].chars().next().expect("a character");
                    text.push(c);
                    i += c.len_utf8();
                }
                if depth == 1 {
                    literals.push((is_value, text));
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    (literals, &code[..i])
}

/// What docs/troubleshooting.md must name for each warning and error the proxy logs: the
/// `event` field where the line has one, else its message up to the first placeholder.
fn logged() -> BTreeSet<String> {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let code = read(&file);
        for call in ["tracing::warn!(", "tracing::error!("] {
            for (at, _) in code.match_indices(call) {
                let (literals, text) = macro_arguments(&code[at + call.len()..]);
                let event = text
                    .split_once("event = \"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| format!("`{name}`"));
                let message =
                    literals
                        .into_iter()
                        .find(|(is_value, _)| !is_value)
                        .map(|(_, text)| {
                            text.split('{')
                                .next()
                                .unwrap_or_default()
                                .trim()
                                .to_string()
                        });
                match (event, message) {
                    (Some(event), _) => names.insert(event),
                    // A message that is only a placeholder (the start-up configuration error,
                    // whose form the chapter describes) has no words of its own to look for.
                    (None, Some(message)) if message.is_empty() => false,
                    (None, Some(message)) => names.insert(message),
                    (None, None) => panic!("{}: a log line without a message", file.display()),
                };
            }
        }
    }
    names
}

#[test]
fn troubleshooting_has_every_logged_warning_and_error() {
    let chapter = read(&root().join("docs/troubleshooting.md"));
    let flat = chapter.split_whitespace().collect::<Vec<_>>().join(" ");
    let logged = logged();
    assert!(
        logged.contains("`key_rejected`") && logged.contains("accept failed"),
        "log lines not read: {logged:?}"
    );
    let missing: Vec<&String> = logged
        .iter()
        .filter(|name| !flat.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md lacks these logged events and messages: {missing:#?}"
    );
}
