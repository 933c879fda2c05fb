//! Who may call the admin API: the bearer token (read from a file, never a
//! flag value, kept only as a hash, compared in constant time) and, when no
//! token is set, the refusal of requests a browser makes for another site.
//!
//! Both sides are hashed with blake3 before the comparison, so neither the
//! content nor the length of the secret leaks through timing, and
//! `blake3::Hash` compares its 32 bytes in constant time.

use axum::http::{header, HeaderMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Shortest token accepted: 16 characters (`openssl rand -hex 32` makes 64).
pub const MIN_TOKEN_LEN: usize = 16;

/// The expected token, as its hash.
#[derive(Clone)]
pub struct Token(blake3::Hash);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token from `path` (surrounding whitespace trimmed).
    /// Returns the token and a warning when the file is readable by group
    /// or others.
    pub fn from_file(path: &Path) -> Result<(Token, Option<String>)> {
        let bytes = std::fs::read(path).ctx("read token file", path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::ServeRefused(format!("token file {} is not UTF-8 text", path.display()))
        })?;
        let token = Token::from_secret(text.trim()).map_err(|e| match e {
            Error::ServeRefused(m) => {
                Error::ServeRefused(format!("token file {}: {m}", path.display()))
            }
            other => other,
        })?;
        let mut warning = None;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                warning = Some(format!(
                    "token file {} is readable by group or others: chmod 600 it",
                    path.display()
                ));
            }
        }
        Ok((token, warning))
    }

    pub fn from_secret(secret: &str) -> Result<Token> {
        if secret.len() < MIN_TOKEN_LEN {
            return Err(Error::ServeRefused(format!(
                "the token is shorter than {MIN_TOKEN_LEN} characters: generate one with `openssl rand -hex 32`"
            )));
        }
        Ok(Token(blake3::hash(secret.as_bytes())))
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        // blake3::Hash's PartialEq is constant time.
        blake3::hash(presented) == self.0
    }

    /// Checks an `Authorization` header value: `Bearer <token>`.
    pub fn check_header(&self, value: &[u8]) -> bool {
        let Some(rest) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
        else {
            return false;
        };
        self.matches(rest.trim_ascii())
    }
}

/// Why a request looks like a browser's from another site, if it does.
///
/// Without a token a loopback server is reachable by any web page the
/// operator's browser shows: the page can POST to it (cross-site request
/// forgery) or, with a DNS name rebound to 127.0.0.1, read its answers. A
/// browser gives both away: it sends the `Host` it resolved (the rebinding
/// name), an `Origin` on cross-origin POSTs and `Sec-Fetch-Site` on every
/// request. A request without these headers is not a browser's and passes.
pub fn cross_site_reason(headers: &HeaderMap, listen: SocketAddr) -> Option<String> {
    let ours = own_hosts(listen);
    let is_ours = |host: &str| ours.iter().any(|h| h.eq_ignore_ascii_case(host));
    let text = |name: header::HeaderName| {
        headers
            .get(&name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
    };
    if let Some(host) = text(header::HOST) {
        if !is_ours(&host) {
            return Some(format!(
                "Host {host:?} is not this server's address {listen}"
            ));
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let same = origin.strip_prefix("http://").is_some_and(is_ours);
        if !same {
            return Some(format!(
                "Origin {origin:?} is another site than http://{listen}"
            ));
        }
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Some(format!("Sec-Fetch-Site is {site:?}"));
        }
    }
    None
}

/// The `Host` values naming this server: its address, `localhost` for a
/// loopback one, and both without the port when it is 80.
fn own_hosts(listen: SocketAddr) -> Vec<String> {
    let port = listen.port();
    let mut names = vec![match listen {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }];
    if listen.ip().is_loopback() {
        names.push("localhost".to_string());
    }
    let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    if port == 80 {
        hosts.extend(names);
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let listen: SocketAddr = "127.0.0.1:8101".parse().unwrap();
        let ok = |pairs: &[(&'static str, &str)]| cross_site_reason(&headers(pairs), listen);
        assert_eq!(ok(&[]), None);
        assert_eq!(ok(&[("host", "127.0.0.1:8101")]), None);
        assert_eq!(ok(&[("host", "LOCALHOST:8101")]), None);
        assert_eq!(
            ok(&[
                ("host", "127.0.0.1:8101"),
                ("origin", "http://127.0.0.1:8101")
            ]),
            None
        );
        assert_eq!(ok(&[("sec-fetch-site", "same-origin")]), None);
        assert_eq!(ok(&[("sec-fetch-site", "none")]), None);
        assert!(ok(&[("host", "evil.example:8101")]).is_some());
        assert!(ok(&[("host", "127.0.0.1:8102")]).is_some());
        assert!(ok(&[("host", "127.0.0.1")]).is_some());
        assert!(ok(&[("origin", "http://evil.example")]).is_some());
        assert!(ok(&[("origin", "null")]).is_some());
        assert!(ok(&[("origin", "https://127.0.0.1:8101")]).is_some());
        assert!(ok(&[("sec-fetch-site", "cross-site")]).is_some());
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(cross_site_reason(&headers(&[("host", "[::1]")]), v6), None);
        assert_eq!(
            cross_site_reason(&headers(&[("host", "localhost:80")]), v6),
            None
        );
    }

    #[test]
    fn checks_the_bearer_header() {
        let t = Token::from_secret("0123456789abcdef0123").unwrap();
        assert!(t.check_header(b"Bearer 0123456789abcdef0123"));
        assert!(t.check_header(b"bearer 0123456789abcdef0123"));
        assert!(!t.check_header(b"Bearer 0123456789abcdef012"));
        assert!(!t.check_header(b"Basic 0123456789abcdef0123"));
        assert!(!t.check_header(b"0123456789abcdef0123"));
        assert!(!t.check_header(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn refuses_short_tokens() {
        assert_eq!(
            Token::from_secret("short").unwrap_err().code(),
            "serve_refused"
        );
    }
}
