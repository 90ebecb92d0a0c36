//! Issue 19: the egress proxy (gateway.md §9). A small CONNECT proxy in the test carries the
//! gateway's upstream connections; TLS to the upstream runs inside the tunnel; `NO_PROXY`
//! bypasses it. One test in its own binary: it sets process environment variables.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CONNECT proxy on 127.0.0.1 that tunnels every CONNECT to `to` (the test's DNS), recording
/// each request head; or, with `refuse`, answers 407.
struct Proxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(to: SocketAddr, refuse: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = heads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    recorded
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    if refuse {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                            .await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(to).await else {
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Proxy { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_connect_proxy_carries_the_traffic_and_no_proxy_bypasses_it() {
    let pki = Pki::new();
    let mock = MockUpstream::start(pki.leaf(&["api.test"])).await;
    let port = mock.addr.port();
    let url = format!("https://api.test:{port}");
    let proxy = Proxy::start(mock.addr, false).await;

    // HTTPS_PROXY with credentials: the tunnel carries TLS to api.test, verified inside it.
    std::env::set_var(
        "HTTPS_PROXY",
        format!("http://gw%40corp:s3cret@127.0.0.1:{}", proxy.addr.port()),
    );
    let gw = start_gateway(test_config(&url, Some(pki.ca_file()))).await;
    for _ in 0..3 {
        assert_eq!(send(get(gw.public_addr, "/x")).await.status, 200);
    }
    assert_eq!(mock.count(), 3);
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "one pooled tunnel: {heads:?}");
    let head = &heads[0];
    assert!(
        head.starts_with(&format!("CONNECT api.test:{port} HTTP/1.1\r\n")),
        "{head}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("gw@corp:s3cret");
    assert!(
        head.contains(&format!("Proxy-Authorization: Basic {basic}\r\n")),
        "{head}"
    );
    // The request itself went inside the tunnel, never as a proxy request.
    assert_eq!(mock.received()[0].target, "/x");
    assert_eq!(mock.received()[0].sni.as_deref(), Some("api.test"));

    // A proxy that refuses the tunnel: 502, counted as a connect failure, and no secret shown.
    let refusing = Proxy::start(mock.addr, true).await;
    let mut c = test_config(&url, Some(pki.ca_file()));
    c.upstream.proxy = Some(format!(
        "http://gw:hunter2@127.0.0.1:{}",
        refusing.addr.port()
    ));
    assert!(!c.to_masked_toml().contains("hunter2"));
    let refused = start_gateway(c).await;
    assert_eq!(send(get(refused.public_addr, "/x")).await.status, 502);
    assert_eq!(
        metric(&refused, "gateway_upstream_errors_total{kind=\"connect\"}").await,
        1.0
    );
    assert_eq!(mock.count(), 3);

    // NO_PROXY naming the host: straight to its address, the proxy sees nothing new.
    std::env::set_var("NO_PROXY", "localhost,.test");
    let mut c = test_config(&url, Some(pki.ca_file()));
    c.upstream.resolve = vec![mock.addr];
    let direct = start_gateway(c).await;
    assert_eq!(send(get(direct.public_addr, "/x")).await.status, 200);
    assert_eq!(mock.count(), 4);
    assert_eq!(proxy.heads().len(), 1);
}
