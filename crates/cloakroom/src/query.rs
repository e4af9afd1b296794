//! Query-string helpers shared by the browser endpoints and the admin API.

use crate::error::Error;

/// Query parameters as pairs (decoded).
pub(crate) fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The single value of query parameter `name`; a repeated parameter is an error.
pub(crate) fn query_param(pairs: &[(String, String)], name: &str) -> Result<Option<String>, Error> {
    let mut it = pairs.iter().filter(|(k, _)| k == name);
    let first = it.next().map(|(_, v)| v.clone());
    if it.next().is_some() {
        return Err(Error::InvalidRequest(format!("repeated parameter {name}")));
    }
    Ok(first)
}
