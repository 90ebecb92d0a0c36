//! The floor of the load benchmark: the gateway's stack (hyper 1, tokio current-thread, rustls on
//! ring, mimalloc) forwarding requests with nothing else on top.
//!
//! ```text
//! floor --listen 127.0.0.1:PORT --upstream https://localhost:PORT --ca-file ca.pem
//! ```
//!
//! Plain HTTP/1.1 with keep-alive in; every request goes to the one TLS upstream over HTTP/1.1,
//! on a connection taken from a LIFO pool of hyper client handles (or a new one), with its URI in
//! origin form and `Host` set to the upstream's authority. Nothing else is added or stripped:
//! no validation, no hop-by-hop handling, no timeouts, no metrics, no logging. Bodies stream
//! through as hyper's `Incoming`. A connection goes back to the pool when its response body has
//! ended. Any error answers 502 with an empty body.

use std::convert::Infallible;
use std::error::Error;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "usage: floor --listen ADDR:PORT --upstream https://HOST:PORT --ca-file CA.pem";

struct Args {
    listen: SocketAddr,
    upstream: Uri,
    ca_file: String,
}

fn parse_args() -> Result<Args, BoxError> {
    let (mut listen, mut upstream, mut ca_file) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>()?),
            "--upstream" => upstream = Some(value.parse::<Uri>()?),
            "--ca-file" => ca_file = Some(value),
            _ => return Err(format!("unknown argument {flag}").into()),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        ca_file: ca_file.ok_or("--ca-file is required")?,
    })
}

/// The one upstream and its idle connections (last in, first out).
struct Upstream {
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    host: HeaderValue,
    tls: TlsConnector,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Upstream {
    fn new(args: &Args) -> Result<Self, BoxError> {
        let url = &args.upstream;
        if url.scheme_str() != Some("https") {
            return Err("--upstream must be an https:// URL".into());
        }
        let authority = url.authority().ok_or("--upstream has no host")?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(443);
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address").into());
        }

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&args.ca_file)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        Ok(Self {
            addrs,
            server_name: ServerName::try_from(host.to_owned())?,
            host: HeaderValue::from_str(authority.as_str())?,
            tls: TlsConnector::from(Arc::new(tls)),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// An idle connection that is ready to send, else a new one.
    async fn sender(&self) -> Result<SendRequest<Incoming>, BoxError> {
        loop {
            let Some(mut tx) = self.idle.lock().unwrap().pop() else {
                break;
            };
            if tx.ready().await.is_ok() {
                return Ok(tx);
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, BoxError> {
        let mut last = None;
        let mut tcp = None;
        for addr in &self.addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => return Err("no upstream address".into()),
        };
        tcp.set_nodelay(true)?;
        let tls = self.tls.connect(self.server_name.clone(), tcp).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }

    fn put_back(&self, tx: SendRequest<Incoming>) {
        self.idle.lock().unwrap().push(tx);
    }
}

/// The upstream's response body; gives the connection back to the pool once it has ended.
struct PoolBody {
    inner: Option<Incoming>,
    back: Option<(SendRequest<Incoming>, Arc<Upstream>)>,
}

impl PoolBody {
    fn empty() -> Self {
        Self {
            inner: None,
            back: None,
        }
    }

    fn release(&mut self) {
        if let Some((tx, up)) = self.back.take() {
            up.put_back(tx);
        }
    }
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => this.release(),
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for PoolBody {
    fn drop(&mut self) {
        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
            self.release();
        }
    }
}

async fn forward(
    up: &Arc<Upstream>,
    req: Request<Incoming>,
) -> Result<Response<PoolBody>, BoxError> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin_form = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(origin_form)?;
    }
    parts.headers.insert(HOST, up.host.clone());
    let mut tx = up.sender().await?;
    let (parts, body) = tx
        .send_request(Request::from_parts(parts, body))
        .await?
        .into_parts();
    let body = PoolBody {
        inner: Some(body),
        back: Some((tx, up.clone())),
    };
    Ok(Response::from_parts(parts, body))
}

async fn handle(
    up: Arc<Upstream>,
    req: Request<Incoming>,
) -> Result<Response<PoolBody>, Infallible> {
    Ok(forward(&up, req).await.unwrap_or_else(|_| {
        let mut resp = Response::new(PoolBody::empty());
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        resp
    }))
}

async fn serve(listen: SocketAddr, up: Arc<Upstream>) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, most likely: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let up = up.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(up.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn main() {
    let run = || -> Result<(), BoxError> {
        let args = parse_args()?;
        let up = Arc::new(Upstream::new(&args)?);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(serve(args.listen, up))
    };
    if let Err(e) = run() {
        eprintln!("floor: {e}\n{USAGE}");
        std::process::exit(2);
    }
}
