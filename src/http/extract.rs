//! Extractors that answer in the one error shape: JSON bodies (limited to
//! [`BODY_BYTES_MAX`], errors naming the field) and query strings (into a struct, errors
//! naming the parameter).

use std::future::{poll_fn, ready, Future, Ready};
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{FromRequest, HttpRequest};
use futures_core::Stream;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// A JSON object body of type `T`. An empty body (no bytes at all) reads as `{}`.
pub struct Json<T>(pub T);

/// Parses `bytes`, a JSON object, as `T`, naming the field a value error is in. Every body
/// of the API is an object: anything else is refused before serde sees it, since a derived
/// struct would otherwise also take its fields as an array (`[null, null]`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None if bytes.is_empty() => b"{}",
        Some(b'{') => bytes,
        _ => {
            return Err(ApiError::Malformed(
                "the body must be a JSON object ({...})".into(),
            ))
        }
    };
    // The fast path; only a body that fails is parsed again to name the failing field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::Malformed(format!("malformed JSON: {inner}"));
        }
        field_error(&path, inner.to_string())
    })?;
    de.end()
        .map_err(|e| ApiError::Malformed(format!("malformed JSON: {e}")))?;
    Ok(value)
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|n| n > BODY_BYTES_MAX) {
                return Err(ApiError::TooLarge(BODY_BYTES_MAX));
            }
            let mut body = Vec::new();
            while let Some(chunk) = poll_fn(|cx| Pin::new(&mut payload).poll_next(cx)).await {
                let chunk = chunk.map_err(|e| match e {
                    // The idle time-out of `http::mod` (a body that stopped arriving).
                    PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                        ApiError::BodyTimeout(format!("unfinished body: {io}"))
                    }
                    e => ApiError::Malformed(e.to_string()),
                })?;
                if body.len() + chunk.len() > BODY_BYTES_MAX {
                    return Err(ApiError::TooLarge(BODY_BYTES_MAX));
                }
                body.extend_from_slice(&chunk);
            }
            parse_json(&body).map(Json)
        })
    }
}

/// The error for a value serde refused at `path`, naming the field: from the path, or from
/// the message when the path is the root ("missing field `cnpj`").
fn field_error(path: &str, message: String) -> ApiError {
    let field = if path == "." || path.is_empty() {
        message.split('`').nth(1).map(str::to_owned)
    } else {
        Some(path.to_owned())
    };
    match field {
        Some(field) => ApiError::BadField { field, message },
        None => ApiError::Malformed(message),
    }
}

/// The query string parsed as `T` (a struct whose fields are the parameters; unknown ones
/// are ignored), errors naming the parameter. An empty value is a value: `?until=` is not a
/// time (400), `?text=` is the empty text.
pub struct Query<T>(pub T);

/// Parses a query string as `T`.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        field_error(&path, e.into_inner().to_string())
    })
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse_query(req.query_string()).map(Query))
    }
}
