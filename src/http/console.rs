//! The support and audit console: a page at `/` and its assets at `/console/assets/{name}`,
//! all embedded in the binary. Plain HTML, CSS and JavaScript modules with no build step; the
//! page calls the JSON API with the token the person signs in with (kept in the tab's
//! `sessionStorage`), so every permission is the API's.
//!
//! Assets come from a fixed table ([`ASSETS`]): a name is looked up, never joined to a path,
//! so nothing outside the table can be served; an unknown name answers 404 in the API's error
//! shape. Every answer carries a Content-Security-Policy that allows this origin only (no
//! inline script or style, no other origin), and an `ETag` so browsers revalidate cheaply.

use std::sync::OnceLock;

use actix_web::http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorBody};

/// The policy of every console answer: this origin only, nothing inline, no framing.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    /// Its name under `/console/assets/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console serves; `index.html` is also the page at `/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("console/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("console/console.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("console/icon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("console/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("console/api.js"),
    },
    Asset {
        name: "i18n.js",
        content_type: JS,
        body: include_bytes!("console/i18n.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("console/dom.js"),
    },
    Asset {
        name: "licenses.js",
        content_type: JS,
        body: include_bytes!("console/licenses.js"),
    },
    Asset {
        name: "actions.js",
        content_type: JS,
        body: include_bytes!("console/actions.js"),
    },
    Asset {
        name: "pages.js",
        content_type: JS,
        body: include_bytes!("console/pages.js"),
    },
    Asset {
        name: "audit.js",
        content_type: JS,
        body: include_bytes!("console/audit.js"),
    },
];

/// Each asset's strong `ETag` (a quoted SHA-256 prefix of its bytes), in [`ASSETS`] order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..32]))
            .collect()
    })
}

/// Mounts `/` and `/console/assets/{name}` (outside `/v1`: no token is needed to load the
/// page; the data it shows needs one).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/console/assets/{name}", web::get().to(asset));
}

/// The support and audit console (the page; what it shows needs a token).
#[utoipa::path(get, path = "/", tag = "console", security(()),
    params(("If-None-Match" = Option<String>, Header, description = "The ETag last received")),
    responses((status = 200, description = "The console's page", content_type = "text/html",
        body = String), (status = 304, description = "Unchanged since the ETag sent")))]
async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve("index.html", &req)
}

/// One of the console's scripts and style sheets.
#[utoipa::path(get, path = "/console/assets/{name}", tag = "console", security(()),
    params(("name" = String, Path, description = "The asset's file name", example = "app.js"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag last received")),
    responses((status = 200, description = "The asset", content(
            (String = "text/javascript; charset=utf-8"), (String = "text/css; charset=utf-8"),
            (String = "text/html; charset=utf-8"), (String = "image/svg+xml"))),
        (status = 304, description = "Unchanged since the ETag sent"),
        (status = 404, description = "No such asset", body = ErrorBody)))]
async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&name, &req)
}

fn serve(name: &str, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
    let (i, asset) = ASSETS
        .iter()
        .enumerate()
        .find(|(_, a)| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no console asset {name:?}")))?;
    let etag = &etags()[i];
    let fresh = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_VALUE))
        .insert_header((X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header((REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .insert_header((X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        // Revalidate every time: the binary (and so the assets) may have changed.
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((ETAG, etag.as_str()));
    if fresh {
        return Ok(res.finish());
    }
    Ok(res
        .insert_header((CONTENT_TYPE, asset.content_type))
        .body(asset.body))
}
