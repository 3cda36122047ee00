//! Extractors that answer in the one error shape: JSON bodies (limited to
//! [`BODY_BYTES_MAX`], errors naming the field) and query parameters (parsed by name).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::{poll_fn, ready, Future, Ready};
use std::pin::Pin;
use std::str::FromStr;

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{FromRequest, HttpRequest};
use futures_core::Stream;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// A JSON body of type `T`. An empty body reads as `{}`.
pub struct Json<T>(pub T);

/// Parses `bytes` as `T`, naming the field a value error is in.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
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
        let message = inner.to_string();
        let field = if path == "." || path.is_empty() {
            // "missing field `cnpj`" names its field only in the message.
            message.split('`').nth(1).map(str::to_owned)
        } else {
            Some(path)
        };
        match field {
            Some(field) => ApiError::BadField { field, message },
            None => ApiError::Malformed(message),
        }
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
                let chunk = chunk.map_err(|e| ApiError::Malformed(e.to_string()))?;
                if body.len() + chunk.len() > BODY_BYTES_MAX {
                    return Err(ApiError::TooLarge(BODY_BYTES_MAX));
                }
                body.extend_from_slice(&chunk);
            }
            parse_json(&body).map(Json)
        })
    }
}

/// The query string's parameters by name.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parameter `name` parsed as `T`, or `None` when absent or empty.
    pub fn get<T>(&self, name: &str) -> Result<Option<T>, ApiError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.0.get(name).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| ApiError::field(name, e)),
        }
    }

    /// Parameter `name` as a raw string.
    pub fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

impl FromRequest for Params {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
                .map(|pairs| Params(pairs.into_iter().collect()))
                .map_err(|e| ApiError::Malformed(format!("malformed query string: {e}"))),
        )
    }
}
