//! The web console: static files embedded in the binary, served at `/`
//! (`index.html`) and under `/console/...`, with a strict
//! Content-Security-Policy. No Node at build or run time: the files are
//! plain ES modules and CSS (`crates/server/console/`), and Chart.js is
//! vendored with its licence and version (`console/vendor/chart.js/`).
//!
//! The console is a client of the same `/v1` API: it holds no credential
//! (the browser keeps it in `sessionStorage`) and these routes need none.
//! An unknown path under `/console/` is the API's 404, never the page.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The Content-Security-Policy of every console response: nothing but this
/// origin's own scripts, styles and API; no inline script or style, no
/// framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// One embedded file.
struct Asset {
    /// Its path under `/console/` (`index.html` is also served at `/`).
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $type:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../console/", $path)),
        }),*]
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file of the console.
static ASSETS: &[Asset] = assets! {
    "index.html" => HTML,
    "style.css" => CSS,
    "favicon.svg" => "image/svg+xml",
    "app.js" => JS,
    "api.js" => JS,
    "ui.js" => JS,
    "pages/keys.js" => JS,
    "pages/key.js" => JS,
    "pages/key-edit.js" => JS,
    "pages/users.js" => JS,
    "pages/usage.js" => JS,
    "pages/audit.js" => JS,
    "vendor/chart.js/chart.umd.min.js" => JS,
    "vendor/chart.js/LICENSE.md" => TEXT,
    "vendor/chart.js/VERSION" => TEXT,
};

/// The ETag of each asset, in [`ASSETS`] order: its SHA-256, computed once.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = hex::encode(&Sha256::digest(a.body)[..16]);
                HeaderValue::from_str(&format!("\"{digest}\"")).expect("hex is a header value")
            })
            .collect()
    })
}

/// The console's routes (not in the OpenAPI document: they are not the API).
pub(crate) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(index))
        .route("/console/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The asset at `path` with the console's headers; 304 when the client's
/// `If-None-Match` holds its ETag; the API's 404 for any other path.
fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::no_route().into_response();
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag.to_str().unwrap_or_default() || t.trim() == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    // Always revalidated: the paths are not versioned, and the ETag makes
    // the check cheap.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h);
    response
}

/// The security headers of every console response.
fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_path_and_an_etag() {
        let mut paths: Vec<_> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        assert_eq!(etags().len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
    }
}
