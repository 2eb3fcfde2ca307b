//! Bearer-token authentication: `authorization: Bearer <token>` on every call but the health
//! check. Tokens are compared as SHA-256 digests in constant time, against every configured
//! token, so neither the match nor its position leaks through timing.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The configured tokens (none: every call is let through).
#[derive(Clone, Default)]
pub struct Auth {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} tokens)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Auth {
    /// Checks against these tokens; an empty list turns authentication off.
    pub fn new(tokens: &[String]) -> Self {
        Auth { digests: Arc::new(tokens.iter().map(|t| digest(t.as_bytes())).collect()) }
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `token` is one of the configured ones (constant time in the token's content).
    pub fn accepts(&self, token: &str) -> bool {
        let d = digest(token.as_bytes());
        self.digests.iter().fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&d)).into()
    }

    /// The tonic interceptor.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.enabled() {
            return Ok(req);
        }
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
        match token {
            Some(t) if self.accepts(t.trim()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("the bearer token is not valid")),
            None => Err(Status::unauthenticated("this server needs `authorization: Bearer <token>` metadata")),
        }
    }
}
