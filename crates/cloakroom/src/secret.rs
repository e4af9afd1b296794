//! Secret strings: tokens, client secret, admin token. `Debug` never shows the value.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret string. The only accessor is [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// # Security Warning
    /// The raw secret: never log it, never put it in a response to the browser.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Compares two byte strings in time independent of where they differ (`subtle`; the length
/// itself is not secret here).
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}
