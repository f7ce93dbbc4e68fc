//! The optional pre-shared authentication token a client presents in HELLO.
//!
//! A server whose [`Config::auth_token`](crate::Config::auth_token) is set refuses every HELLO
//! that does not carry the same token, with CLOSE [`AuthFailed`](crate::CloseCode::AuthFailed)
//! (code 12). Tokens are compared in constant time and never printed: `Debug` shows
//! `AuthToken(..)`. The token travels in clear in HELLO, so it only protects a port whose
//! transport is confidential (TLS) or trusted.

use std::fmt;

/// Longest authentication token, in bytes.
pub const MAX_AUTH_TOKEN_LEN: usize = 64;

/// A pre-shared authentication token of 1 to [`MAX_AUTH_TOKEN_LEN`] bytes (any bytes).
///
/// `Copy` and fixed-size (65 bytes), so that it fits in the `Copy` [`Config`](crate::Config).
#[derive(Clone, Copy)]
pub struct AuthToken {
    len: u8,
    /// The token, then zeros (the padding takes part in the constant-time comparison).
    bytes: [u8; MAX_AUTH_TOKEN_LEN],
}

/// Why bytes cannot be an [`AuthToken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthTokenError {
    /// The token is empty.
    #[error("the authentication token is empty")]
    Empty,
    /// The token is longer than [`MAX_AUTH_TOKEN_LEN`] bytes.
    #[error("the authentication token has {len} bytes, at most {max} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

impl AuthToken {
    /// A token from 1 to [`MAX_AUTH_TOKEN_LEN`] bytes.
    pub fn new(token: &[u8]) -> Result<AuthToken, AuthTokenError> {
        if token.is_empty() {
            return Err(AuthTokenError::Empty);
        }
        let len = u8::try_from(token.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_AUTH_TOKEN_LEN)
            .ok_or(AuthTokenError::TooLong {
                len: token.len(),
                max: MAX_AUTH_TOKEN_LEN,
            })?;
        let mut bytes = [0u8; MAX_AUTH_TOKEN_LEN];
        bytes
            .get_mut(..token.len())
            .ok_or(AuthTokenError::TooLong {
                len: token.len(),
                max: MAX_AUTH_TOKEN_LEN,
            })?
            .copy_from_slice(token);
        Ok(AuthToken { len, bytes })
    }

    /// The token bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Its length in bytes (1 to [`MAX_AUTH_TOKEN_LEN`]).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false (a token has at least one byte); present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Constant-time comparison: all [`MAX_AUTH_TOKEN_LEN`] padded bytes and the length are
    /// compared whatever they hold, so the time taken does not depend on where (or whether) the
    /// tokens differ.
    pub fn ct_eq(&self, other: &AuthToken) -> bool {
        let diff = self
            .bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(self.len ^ other.len, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl PartialEq for AuthToken {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}
impl Eq for AuthToken {}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        assert_eq!(AuthToken::new(b"").unwrap_err(), AuthTokenError::Empty);
        assert!(AuthToken::new(&[7; 64]).is_ok());
        assert_eq!(
            AuthToken::new(&[7; 65]).unwrap_err(),
            AuthTokenError::TooLong { len: 65, max: 64 }
        );
        assert_eq!(
            AuthToken::new(&[7; 300]).unwrap_err(),
            AuthTokenError::TooLong { len: 300, max: 64 }
        );
        assert_eq!(AuthToken::new(b"abc").unwrap().as_bytes(), b"abc");
    }

    #[test]
    fn comparison_covers_bytes_and_length() {
        let a = AuthToken::new(b"secret").unwrap();
        assert!(a.ct_eq(&AuthToken::new(b"secret").unwrap()));
        assert!(!a.ct_eq(&AuthToken::new(b"secreT").unwrap()));
        assert!(!a.ct_eq(&AuthToken::new(b"secret\0").unwrap()));
        assert!(!a.ct_eq(&AuthToken::new(b"secre").unwrap()));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let a = AuthToken::new(b"hunter2-super-secret").unwrap();
        let shown = format!("{a:?} {:?}", Some(a));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("104, 117"), "{shown}"); // 'h', 'u' as numbers
        assert_eq!(format!("{a:?}"), "AuthToken(..)");
    }
}
