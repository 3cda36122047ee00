//! The one error type of the HTTP edge and its one mapping to status codes. Every response
//! that is not a success has the body `{"error": code, "message": text, "field": name?}`.
//! Internal causes are logged with their chain and never sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::app::AppError;
use crate::domain::DomainError;
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON of the expected shape.
    #[error("{0}")]
    Malformed(String),
    /// 400: one field (of the body, the path or the query) is invalid.
    #[error("{field}: {message}")]
    BadField {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 401: no token, or an unknown one; the manual's text (rule 2 of the check-in).
    #[error("{}", ledger_events::texts::TOKEN_INVALID)]
    Unauthenticated,
    /// 401: the caller's customer is not active; the manual's text (rule 1 of the check-in).
    #[error("{}", ledger_events::texts::CUSTOMER_INACTIVE)]
    CustomerInactive,
    /// 403: the token's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing, or another customer's.
    #[error("{0}")]
    NotFound(String),
    /// 409: it exists already, or it changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 422: a business rule refused the command.
    #[error("{message}")]
    Rejected {
        /// The rule's message.
        message: String,
        /// The field at fault, when one is.
        field: Option<String>,
    },
    /// 503: the store cannot take or serve requests now; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 429: too many requests of this kind from this caller or address; retry later.
    #[error("{0}")]
    RateLimited(String),
    /// 500: a bug or damage; details are in the log only.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// A field-level 400.
    pub fn field(field: impl Into<String>, message: impl ToString) -> Self {
        ApiError::BadField {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "malformed",
            ApiError::BadField { .. } => "invalid_field",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::CustomerInactive => "customer_inactive",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "body_too_large",
            ApiError::Rejected { .. } => "rejected",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Internal => "internal",
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) | ApiError::BadField { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated | ApiError::CustomerInactive => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let field = match self {
            ApiError::BadField { field, .. } => Some(field.as_str()),
            ApiError::Rejected { field, .. } => field.as_deref(),
            _ => None,
        };
        HttpResponse::build(self.status_code()).json(Body {
            error: self.code(),
            message: self.to_string(),
            field,
        })
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            DomainError::AlreadyExists { .. } => ApiError::Conflict(e.to_string()),
            DomainError::Rejected(message) => ApiError::Rejected {
                message,
                field: None,
            },
            DomainError::InvalidField { field, problem } => ApiError::Rejected {
                message: format!("{field}: {problem}"),
                field: Some(field.into()),
            },
            DomainError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { .. } | StoreError::DuplicateEventId { .. } => {
                ApiError::Conflict(e.to_string())
            }
            StoreError::Locked(_) => ApiError::Unavailable("the store is unavailable".into()),
            e if e.is_unavailable() => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::Unavailable(
                    match e {
                        StoreError::Unavailable(_) => {
                            "the database (PostgreSQL) cannot be reached: commands are refused \
                             until it returns (check-ins and queries are answered from the read \
                             model); retry later"
                        }
                        StoreError::Io { .. } | StoreError::Poisoned(_) => {
                            "the log cannot be written now (disk full or an I/O error): \
                             commands are refused; retry later"
                        }
                        _ => "the store is unavailable; retry later",
                    }
                    .into(),
                )
            }
            e => {
                tracing::error!(error = %e, "store failure");
                ApiError::Internal
            }
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Domain(d) => d.into(),
            AppError::Store(s) => s.into(),
            AppError::Contention { .. } | AppError::CatchUpTimeout { .. } => {
                tracing::warn!(error = %e, "busy");
                ApiError::Unavailable(format!("{e}; retry later"))
            }
            AppError::ViewStopped(_) => {
                tracing::error!(error = %e, "read model stopped");
                ApiError::Unavailable("the read model stopped; see the server log".into())
            }
        }
    }
}
