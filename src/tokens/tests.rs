//! The token snapshot on disk: checks, changes, failures, last use.
use super::*;
use http::HeaderValue;

fn basic(user: &str, password: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let value = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {value}")).expect("header"),
    );
    h
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    h
}

fn create(path: &Path, name: &str) -> Secret {
    let (secret, hash) = generate().expect("random");
    modify(path, |tokens| {
        tokens.push(TokenRecord {
            name: name.into(),
            sha256: hash,
            state: TokenState::Active,
            created: now_rfc3339(),
            changed: None,
            views: Vec::new(),
        })
    })
    .expect("write");
    secret
}

fn set_state(path: &Path, name: &str, state: TokenState) {
    modify(path, |tokens| {
        for t in tokens.iter_mut().filter(|t| t.name == name) {
            t.state = state;
        }
    })
    .expect("write");
}

#[test]
fn secrets_are_random_prefixed_and_stored_only_as_hashes() {
    let (a, hash_a) = generate().expect("random");
    let (b, _) = generate().expect("random");
    assert_ne!(a, b);
    assert!(a.expose().starts_with(TOKEN_PREFIX));
    assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 43);
    assert_eq!(hash_a, hex::encode(Sha256::digest(a.expose().as_bytes())));
    assert!(!format!("{a:?}").contains(a.expose()));
}

#[test]
fn names_are_validated() {
    assert!(validate_name("ci-runner_1@team.example").is_ok());
    for bad in ["", "a b", "x/y", "é", &"n".repeat(65), "a\"b"] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn tokens_are_checked_in_basic_and_bearer_and_changes_apply_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.json");
    let tokens = Tokens::open(path.clone());
    assert_eq!(tokens.check(&HeaderMap::new()), Verdict::Absent);
    assert_eq!(tokens.check(&bearer("cpt_nope")), Verdict::Unknown);

    let secret = create(&path, "ci");
    tokens.refresh();
    let ci: Arc<str> = "ci".into();
    assert_eq!(
        tokens.check(&bearer(secret.expose())),
        Verdict::Valid(ci.clone())
    );
    assert_eq!(
        tokens.check(&basic("ci", secret.expose())),
        Verdict::Valid(ci.clone())
    );
    assert_eq!(
        tokens.check(&basic(secret.expose(), "")),
        Verdict::Valid(ci.clone())
    );
    assert_eq!(tokens.check(&basic("ci", "wrong")), Verdict::Unknown);

    set_state(&path, "ci", TokenState::Disabled);
    tokens.refresh();
    assert_eq!(
        tokens.check(&bearer(secret.expose())),
        Verdict::Disabled(ci.clone())
    );
    set_state(&path, "ci", TokenState::Active);
    tokens.refresh();
    assert_eq!(
        tokens.check(&bearer(secret.expose())),
        Verdict::Valid(ci.clone())
    );
    set_state(&path, "ci", TokenState::Deleted);
    tokens.refresh();
    assert_eq!(tokens.check(&bearer(secret.expose())), Verdict::Deleted(ci));
}

#[test]
fn an_unusable_token_file_refuses_every_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.json");
    let secret = create(&path, "ci");
    let tokens = Tokens::open(path.clone());
    assert!(tokens.usable());
    assert!(matches!(
        tokens.check(&bearer(secret.expose())),
        Verdict::Valid(_)
    ));
    fs::write(&path, b"{not json").expect("write");
    tokens.refresh();
    assert_eq!(tokens.check(&bearer(secret.expose())), Verdict::Unavailable);
    assert_eq!(tokens.active(), 0);
    assert!(!tokens.usable());
    // Fixed: accepted again.
    fs::remove_file(&path).expect("remove");
    let again = create(&path, "ci");
    tokens.refresh();
    assert!(matches!(
        tokens.check(&bearer(again.expose())),
        Verdict::Valid(_)
    ));
}

#[test]
fn hand_edited_records_with_unsafe_names_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.json");
    let secret = create(&path, "ci");
    modify(&path, |tokens| {
        tokens[0].name = "ci\nforged log line".into()
    })
    .expect("write");
    let tokens = Tokens::open(path);
    assert_eq!(tokens.check(&bearer(secret.expose())), Verdict::Unknown);
}

#[test]
fn last_use_is_merged_into_its_own_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens.json");
    let secret = create(&path, "ci");
    let hash = read(&path).expect("read")[0].sha256.clone();
    let tokens = Tokens::open(path.clone());
    tokens.flush_last_use();
    assert!(read_last_use(&path).is_empty());
    assert!(matches!(
        tokens.check(&bearer(secret.expose())),
        Verdict::Valid(_)
    ));
    tokens.flush_last_use();
    let used = read_last_use(&path);
    assert!(used.get(&hash).is_some_and(|at| *at > 0), "{used:?}");
    // The token file itself is left to the administrator's commands.
    assert_eq!(read(&path).expect("read").len(), 1);
    // A second use within the minute writes nothing new.
    assert!(matches!(
        tokens.check(&bearer(secret.expose())),
        Verdict::Valid(_)
    ));
    assert!(tokens.pending_use.lock().expect("lock").is_empty());
}
