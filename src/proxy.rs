//! The egress proxy (gateway.md §9): `upstream.proxy`, else `HTTPS_PROXY`/`https_proxy`, unless
//! `NO_PROXY` names the upstream's host. Upstream connections are tunnelled with
//! `CONNECT host:port` and TLS to the upstream runs inside the tunnel, so the proxy sees neither
//! the requests nor the upstream's certificate check. The proxy's credentials are a secret: they
//! travel only in `Proxy-Authorization`, never in a log line or an error.

use std::fmt;

use base64::Engine as _;
use http::uri::Authority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest proxy response head read before giving up.
const MAX_HEAD: usize = 8192;

/// A parsed `http://[user:password@]host:port` proxy URL.
#[derive(Clone)]
pub(crate) struct ProxyUrl {
    /// Host without brackets, for DNS.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `Basic …`, from the URL's userinfo.
    auth: Option<String>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials.
        write!(f, "{self}")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = if self.auth.is_some() { "***@" } else { "" };
        if self.host.contains(':') {
            write!(f, "http://{user}[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{user}{}:{}", self.host, self.port)
        }
    }
}

impl ProxyUrl {
    /// `http://` only (the tunnel itself is plain; TLS to the upstream runs inside it). The error
    /// never repeats the URL, which may hold a password.
    pub(crate) fn parse(url: &str) -> Result<ProxyUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("must be an http://host:port URL (CONNECT to a plain HTTP proxy)")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("must have no path or query".into());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let authority: Authority = hostport
            .parse()
            .map_err(|_| "has no valid host:port".to_string())?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = authority.port_u16().unwrap_or(80);
        let auth = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let plain = format!("{}:{}", percent_decode(user), percent_decode(pass));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(plain)
            )
        });
        Ok(ProxyUrl { host, port, auth })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which proxy, if any, carries connections to `host`: `upstream.proxy`, else the environment's
/// `HTTPS_PROXY` (or `https_proxy`); none when `NO_PROXY` (or `no_proxy`) names the host.
/// `env` reads a variable (the process environment, or a test's table).
pub(crate) fn select(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    host: &str,
) -> Result<Option<ProxyUrl>, String> {
    let var = |upper: &str, lower: &str| {
        env(upper)
            .or_else(|| env(lower))
            .filter(|v| !v.trim().is_empty())
    };
    let (url, from) = match configured {
        Some(url) => (url.to_string(), "upstream.proxy"),
        None => match var("HTTPS_PROXY", "https_proxy") {
            Some(url) => (url, "HTTPS_PROXY"),
            None => return Ok(None),
        },
    };
    if let Some(list) = var("NO_PROXY", "no_proxy") {
        if no_proxy_matches(&list, host) {
            return Ok(None);
        }
    }
    ProxyUrl::parse(&url)
        .map(Some)
        .map_err(|m| format!("{from}: {m}"))
}

/// `NO_PROXY` as curl reads it: comma-separated hosts; `*` matches all; an entry matches the host
/// itself and its subdomains (a leading dot is optional); a `:port` on an entry is ignored.
pub(crate) fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.trim_start_matches('[');
        let entry = match entry.split_once(']') {
            Some((ip6, _)) => ip6,
            None if entry.matches(':').count() == 1 => entry.split(':').next().unwrap_or(entry),
            None => entry,
        };
        let entry = entry.trim_start_matches('.').to_ascii_lowercase();
        !entry.is_empty()
            && (host == entry
                || (host.len() > entry.len()
                    && host.ends_with(&entry)
                    && host.as_bytes()[host.len() - entry.len() - 1] == b'.'))
    })
}

/// The proxy refused or broke the tunnel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("proxy I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("proxy answered CONNECT with {0}")]
    Refused(String),
    #[error("proxy response to CONNECT is malformed or over {MAX_HEAD} bytes")]
    Malformed,
}

/// Opens the tunnel on `tcp` (connected to the proxy) to `target` (`host:port` of the URL).
pub(crate) async fn tunnel(
    tcp: &mut TcpStream,
    proxy: &ProxyUrl,
    target: &str,
) -> Result<(), TunnelError> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    // The upstream speaks only after the client's hello, so nothing follows the proxy's head:
    // reading in chunks cannot swallow TLS bytes.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(TunnelError::Malformed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(TunnelError::Malformed);
        }
    };
    if end != buf.len() {
        return Err(TunnelError::Malformed);
    }
    let status_line = buf
        .split(|b| *b == b'\r')
        .next()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => {
            if code.starts_with('2') {
                Ok(())
            } else {
                // The status line only: a proxy's reason phrase carries nothing secret of ours.
                Err(TunnelError::Refused(status_line.chars().take(80).collect()))
            }
        }
        _ => Err(TunnelError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_url_keeps_its_credentials_out_of_sight() {
        let p = ProxyUrl::parse("http://us%40er:pa%3Ass@proxy.corp:3128").unwrap();
        assert_eq!(p.host, "proxy.corp");
        assert_eq!(p.port, 3128);
        let expected = base64::engine::general_purpose::STANDARD.encode("us@er:pa:ss");
        assert_eq!(p.auth.as_deref(), Some(&*format!("Basic {expected}")));
        for shown in [p.to_string(), format!("{p:?}")] {
            assert_eq!(shown, "http://***@proxy.corp:3128");
        }
        assert_eq!(ProxyUrl::parse("http://10.0.0.1/").unwrap().port, 80);
        assert!(ProxyUrl::parse("https://proxy:3128").is_err());
        assert!(ProxyUrl::parse("http://proxy:3128/path").is_err());
        let err = ProxyUrl::parse("http://user:secret@").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn no_proxy_matches_hosts_and_their_subdomains() {
        assert!(no_proxy_matches("*", "api.example"));
        assert!(no_proxy_matches(
            "localhost, .example.com",
            "api.example.com"
        ));
        assert!(no_proxy_matches("example.com:443", "example.com"));
        assert!(no_proxy_matches("127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches("[::1]", "[::1]"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(!no_proxy_matches("", "example.com"));
        assert!(!no_proxy_matches("other.example", "api.example"));
    }

    #[test]
    fn the_configured_proxy_wins_and_no_proxy_bypasses_either() {
        let env = |table: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                table
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none: &[(&str, &str)] = &[];
        assert!(select(None, env(none), "api.example").unwrap().is_none());
        let lower = &[("https_proxy", "http://p:1")];
        let p = select(None, env(lower), "api.example").unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("p", 1));
        let both = &[("HTTPS_PROXY", "http://env:1")];
        let p = select(Some("http://cfg:2"), env(both), "api.example")
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "cfg");
        let bypass = &[("HTTPS_PROXY", "http://env:1"), ("NO_PROXY", "example")];
        assert!(select(None, env(bypass), "api.example").unwrap().is_none());
        let bad = &[("HTTPS_PROXY", "socks5://x:1")];
        assert!(select(None, env(bad), "api.example")
            .unwrap_err()
            .starts_with("HTTPS_PROXY"));
    }
}
