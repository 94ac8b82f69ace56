//! A real S3-compatible server for the object-storage tests: moto's server mode (PyPI), started
//! on a free port in a child process, with the bucket created; and a relay in front of it that
//! slows uploads down, so a test can kill a replica while one is in progress.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::ObjectStore;

use super::mock_upstream::{MockUpstream, TEST_PRIVATE_KEY, TEST_PUBLIC_KEY};

/// The environment of a replica in front of `mock` (with its keys), with `cache` as its own
/// local tier and the bucket at `endpoint`.
pub fn replica_env(
    mock: &MockUpstream,
    endpoint: &str,
    cache: &std::path::Path,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("COMPOSER_PROXY_UPSTREAM_URL".to_string(), mock.url()),
        ("COMPOSER_PROXY_PUBLIC_KEY".into(), TEST_PUBLIC_KEY.into()),
        ("COMPOSER_PROXY_PRIVATE_KEY".into(), TEST_PRIVATE_KEY.into()),
        (
            "COMPOSER_PROXY_CACHE_DIR".into(),
            cache.to_str().expect("utf-8").into(),
        ),
    ];
    env.extend(Moto::env(endpoint));
    env
}

/// The bucket every test uses (moto keeps each server's buckets apart).
pub const BUCKET: &str = "composer";
/// The proxies' secret key (moto takes any): distinctive, so a test can look for it in logs.
pub const SECRET: &str = "bucket-secret-5f3a9c0d";
/// The prefix the proxies are given.
pub const PREFIX: &str = "proxy";
pub const MOTO_MISSING: &str =
    "moto's S3 server is needed: pip install 'moto[server]==5.2.5', or run scripts/test, which installs it";

/// Starts the server, creates the bucket, prints the port, then serves until stdin closes.
const SCRIPT: &str = r#"
import sys
import boto3
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
port = server.get_host_and_port()[1]
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="test",
             aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket=sys.argv[2])
print(port, flush=True)
sys.stdin.read()
"#;

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// On a port the kernel picks.
    pub fn start() -> Moto {
        Self::start_on(0)
    }

    /// On `port` (0: any free one); used again to bring a stopped server back.
    pub fn start_on(port: u16) -> Moto {
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, &port.to_string(), BUCKET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{MOTO_MISSING} (python3: {e})"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        // The script prints its port once it serves, or dies; either ends this read.
        let _ = BufReader::new(stdout).read_line(&mut line);
        let Ok(port) = line.trim().parse::<u16>() else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{MOTO_MISSING}\n{err}");
        };
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server; its buckets are gone with it.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// The proxy's settings for this server's bucket, through `endpoint` (the server's own,
    /// or a relay's in front of it).
    pub fn env(endpoint: &str) -> Vec<(String, String)> {
        [
            (
                "COMPOSER_PROXY_OBJECT_STORE_URL",
                format!("s3://{BUCKET}/{PREFIX}"),
            ),
            ("AWS_ENDPOINT_URL", endpoint.to_string()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Keys (below the prefix) and sizes of the objects under `PREFIX/<folder>/`.
    pub async fn list(&self, folder: &str) -> Vec<(String, u64)> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_access_key_id("test")
            .with_secret_access_key(SECRET)
            .with_region("us-east-1")
            .build()
            .expect("S3 client");
        let prefix = Path::from(format!("{PREFIX}/{folder}"));
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .expect("listing the bucket");
        objects
            .into_iter()
            .map(|o| (o.location.to_string(), o.size))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay to the server that forwards requests at about `bytes_per_sec`, counting the
/// bytes of archive uploads (PUTs to `…/archives/…`) that got through.
pub struct SlowRelay {
    pub port: u16,
    uploaded: Arc<AtomicU64>,
    upload_ended: Arc<AtomicBool>,
}

impl SlowRelay {
    pub fn start(target_port: u16, bytes_per_sec: u64) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let uploaded = Arc::new(AtomicU64::new(0));
        let upload_ended = Arc::new(AtomicBool::new(false));
        let (counter, ended) = (uploaded.clone(), upload_ended.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let (counter, ended) = (counter.clone(), ended.clone());
                let (client_read, server_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || pipe(server, client, None));
                std::thread::spawn(move || {
                    pipe(
                        client_read,
                        server_write,
                        Some((bytes_per_sec, counter, ended)),
                    )
                });
            }
        });
        SlowRelay {
            port,
            uploaded,
            upload_ended,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes of archive uploads forwarded so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::SeqCst)
    }

    /// Whether a connection that carried an archive upload has been closed by the client.
    pub fn upload_ended(&self) -> bool {
        self.upload_ended.load(Ordering::SeqCst)
    }
}

type Throttle = (u64, Arc<AtomicU64>, Arc<AtomicBool>);

/// Copies `from` to `to` until either side closes; with a throttle, in small chunks at the
/// given rate, counting upload bytes.
fn pipe(mut from: TcpStream, mut to: TcpStream, throttle: Option<Throttle>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut uploading = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((rate, counter, _)) = &throttle {
            let chunk = &buf[..n];
            if contains(chunk, b"PUT /") && contains(chunk, b"/archives/") {
                uploading = true;
            }
            // The rate is the point of the relay: it is what makes an upload take long enough
            // to be interrupted, not a wait for some event.
            std::thread::sleep(Duration::from_micros(n as u64 * 1_000_000 / rate));
            if uploading {
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    if let (true, Some((_, _, ended))) = (uploading, &throttle) {
        ended.store(true, Ordering::SeqCst);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
