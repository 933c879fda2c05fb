//! The admin API's bearer token: read from a file (never a flag value),
//! kept only as a hash, compared in constant time.
//!
//! Both sides are hashed with blake3 before the comparison, so neither the
//! content nor the length of the secret leaks through timing, and
//! `blake3::Hash` compares its 32 bytes in constant time.

use std::fmt;
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

#[cfg(test)]
mod tests {
    use super::*;

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
