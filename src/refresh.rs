//! Keeping the access token fresh before it is forwarded (SPEC §3).
//!
//! Issue #3 brings single-flight refresh across instances; until then a session whose access
//! token has expired is forwarded as it is and the upstream decides.

use crate::app::AppState;
use crate::error::Error;
use crate::session::Session;

/// Returns the session with a usable access token.
///
/// # Errors
/// Store and IdP failures (see SPEC §3).
pub(crate) async fn ensure_fresh(
    _state: &AppState,
    _handle: String,
    session: Session,
) -> Result<Session, Error> {
    Ok(session)
}
