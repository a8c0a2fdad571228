//! `GET /ui`: one small page embedded in the binary (`ui.html`, `ui.js`; no build step) that
//! reads this listener's JSON API: operations with filters, one operation's timeline, each
//! upstream's budget, AIMD rate and requests per minute, failed deliveries with a redeliver
//! button. The page and its script carry no data, so they need no token; the API calls they
//! make send the one typed into the page (kept in the tab's `sessionStorage`). Served on the
//! private listener only.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("ui.html");
const SCRIPT: &str = include_str!("ui.js");

/// Only this origin's script and API; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
