//! Scale-out, proven: three proxy processes share one cache directory behind nginx's
//! round-robin balancer, and several real Composer installs run through it at once. Every
//! install must succeed; upstream may see each archive at most once per replica (and, thanks to
//! the per-archive locks, ideally once in all); nothing corrupt or partial may be stored.

use crate::support;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use support::catalogue::Catalogue;
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{
    MockOptions, MockUpstream, Protocol, TEST_PRIVATE_KEY, TEST_PUBLIC_KEY,
};
use support::process::ProxyProcess;

const PRODUCT: &str = "magento/product-community-edition";
const MODULES: usize = 60;
const REPLICAS: usize = 3;
const INSTALLS: usize = 4;
const NGINX_MISSING: &str = "nginx is needed for the replica test: apt-get install -y nginx-light, or run scripts/test, which installs what the tests need";

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{NGINX_MISSING}"))
}

/// nginx cannot bind port 0; take a free port from the kernel and hand it over.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(port: u16, backends: &[String]) -> Nginx {
        let dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path().display();
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b};\n"))
            .collect();
        // One process, no master: `Drop` kills it outright, and a master killed so would leave
        // its worker serving the port after the test.
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream proxies {{\n{servers}    keepalive 16;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://proxies;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(nginx_binary())
            .args([
                "-p",
                &d.to_string(),
                "-c",
                conf_path.to_str().expect("utf-8"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{NGINX_MISSING} ({e})"));
        let mut nginx = Nginx { child, dir };
        // Bounded wait for the listener; nginx has no readiness signal to wait on instead.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = nginx.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("nginx exited ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// Every stored archive matches the sha1 and length in its description.
fn assert_store_is_sound(cache: &Path) {
    let mut checked = 0;
    for shard in std::fs::read_dir(cache.join("archives")).expect("archives") {
        for file in std::fs::read_dir(shard.expect("shard").path()).expect("shard") {
            let path = file.expect("file").path();
            if path.extension().is_none_or(|e| e != "bin") {
                continue;
            }
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(path.with_extension("json")).expect("description"),
            )
            .expect("description JSON");
            let bytes = std::fs::read(&path).expect("archive");
            assert_eq!(
                bytes.len() as u64,
                meta["len"].as_u64().expect("len"),
                "{}",
                path.display()
            );
            if let Some(sha1) = meta["shasum"].as_str() {
                assert_eq!(
                    hex::encode(Sha1::digest(&bytes)),
                    sha1,
                    "{}",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp"))
        .expect("tmp")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_share_one_cache_and_fetch_each_archive_once() {
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    // A little latency per upstream request, so concurrent misses really overlap.
    mock.set_delay(Duration::from_millis(50));
    let cache = tempfile::tempdir().expect("cache");
    let port = free_port();
    let public_url = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = vec![
        ("COMPOSER_PROXY_UPSTREAM_URL".into(), mock.url()),
        ("COMPOSER_PROXY_PUBLIC_KEY".into(), TEST_PUBLIC_KEY.into()),
        ("COMPOSER_PROXY_PRIVATE_KEY".into(), TEST_PRIVATE_KEY.into()),
        ("COMPOSER_PROXY_PUBLIC_URL".into(), public_url.clone()),
        (
            "COMPOSER_PROXY_CACHE_DIR".into(),
            cache.path().to_str().expect("utf-8").into(),
        ),
    ];
    let replicas: Vec<ProxyProcess> =
        tokio::task::block_in_place(|| (0..REPLICAS).map(|_| ProxyProcess::start(&env)).collect());
    let backends: Vec<String> = replicas.iter().map(|r| r.listen.clone()).collect();
    let nginx = tokio::task::block_in_place(|| Nginx::start(port, &backends));

    let started = Instant::now();
    let installs: Vec<_> = (0..INSTALLS)
        .map(|_| {
            let url = public_url.clone();
            tokio::task::spawn_blocking(move || {
                let project = ComposerProject::new(&url, &[(PRODUCT, "2.4.7")]);
                project.run_ok(&["install", "--no-progress"]);
                project
            })
        })
        .collect();
    let mut projects = Vec::new();
    for install in installs {
        projects.push(install.await.expect("install task"));
    }
    let elapsed = started.elapsed();

    for project in &projects {
        let locked = project.locked_versions();
        let product = catalogue.version(PRODUCT, "2.4.7").expect("product");
        for (name, _) in &product.require {
            assert_installed_matches(project, &catalogue, name, &locked[name]);
        }
    }

    let archives: Vec<String> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/archives/"))
        .map(|r| r.path)
        .collect();
    let mut per_archive = std::collections::HashMap::<&str, usize>::new();
    for path in &archives {
        *per_archive.entry(path).or_default() += 1;
    }
    let worst = per_archive.values().copied().max().unwrap_or(0);
    assert!(
        worst <= REPLICAS,
        "an archive was fetched {worst} times by {REPLICAS} replicas"
    );
    eprintln!(
        "replicas: {INSTALLS} concurrent installs of {} archives through {REPLICAS} replicas in {:.2}s; \
         upstream archive requests {} ({} distinct, at most {worst} for one)",
        per_archive.len(),
        elapsed.as_secs_f64(),
        archives.len(),
        per_archive.len()
    );
    assert_store_is_sound(cache.path());
    drop(nginx);
    drop(replicas);
}
