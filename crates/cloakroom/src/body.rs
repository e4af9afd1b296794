//! The one response/request body type: a boxed, streaming body.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Every body we produce: upstream bodies stream through, ours are small and whole.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A whole body from bytes.
#[must_use]
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
#[must_use]
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
