//! The one error type of the HTTP edge and its one mapping to status codes. Every response
//! that is not a success has the body `{"error": code, "message": text, "field": name?}`.
//! Internal causes are logged with their chain and never sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use ledger_events::Position;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppError;
use crate::domain::DomainError;
use crate::store::StoreError;

/// Seconds a busy answer asks the client to wait (`Retry-After`).
pub const BUSY_RETRY_AFTER_S: u32 = 1;

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
    /// 409: the `command_id` was used before for another command (another route, body or
    /// caller); nothing was recorded.
    #[error("{0}")]
    CommandIdReused(String),
    /// 413: the body is larger than the limit.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 408: the body stopped arriving.
    #[error("{0}")]
    BodyTimeout(String),
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
    /// 429 with `Retry-After`: a write quota of the caller's token or customer is used up
    /// (`crate::http::quotas`); nothing was written, retry after `retry_after_s` seconds.
    #[error("{message}")]
    OverQuota {
        /// Which quota, and what to do.
        message: String,
        /// Seconds until the quota's window ends, sent as `Retry-After`.
        retry_after_s: u32,
    },
    /// 503 with `Retry-After`: the command met contention it could not resolve in time (ids
    /// taken by other nodes, version conflicts, a read model behind); nothing is wrong with
    /// the request, retry it (with the same `command_id`) after `retry_after_s` seconds.
    #[error("{message}")]
    Busy {
        /// What was contended.
        message: String,
        /// Seconds the client should wait, sent as `Retry-After`.
        retry_after_s: u32,
    },
    /// 503 with `Retry-After` (`/healthz`): the read model is still catching up with the log
    /// as it was when the server started; the answer says how far it is.
    #[error("the read model is catching up with the log: position {position} of {head}")]
    CatchingUp {
        /// The position the read model has applied.
        position: Position,
        /// The position it must reach: the log's head when the server started.
        head: Position,
    },
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
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Malformed(_) => ErrorCode::Malformed,
            ApiError::BadField { .. } => ErrorCode::InvalidField,
            ApiError::Unauthenticated => ErrorCode::Unauthenticated,
            ApiError::CustomerInactive => ErrorCode::CustomerInactive,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::CommandIdReused(_) => ErrorCode::CommandIdReused,
            ApiError::TooLarge(_) => ErrorCode::BodyTooLarge,
            ApiError::BodyTimeout(_) => ErrorCode::BodyTimeout,
            ApiError::Rejected { .. } => ErrorCode::Rejected,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::RateLimited(_) | ApiError::OverQuota { .. } => ErrorCode::RateLimited,
            ApiError::Busy { .. } => ErrorCode::Busy,
            ApiError::CatchingUp { .. } => ErrorCode::CatchingUp,
            ApiError::Internal => ErrorCode::Internal,
        }
    }

    /// The body this error answers with.
    pub fn body(&self) -> ErrorBody {
        let field = match self {
            ApiError::BadField { field, .. } => Some(field.clone()),
            ApiError::Rejected { field, .. } => field.clone(),
            ApiError::CommandIdReused(_) => Some("command_id".into()),
            _ => None,
        };
        let (status, position, head) = match self {
            ApiError::CatchingUp { position, head } => {
                (Some("catching_up"), Some(*position), Some(*head))
            }
            _ => (None, None, None),
        };
        let messages = matches!(self, ApiError::Unauthenticated | ApiError::CustomerInactive)
            .then(|| ledger_events::texts::refused_401(&self.to_string()));
        ErrorBody {
            error: self.code(),
            messages,
            message: self.to_string(),
            field,
            status,
            position,
            head,
        }
    }
}

/// The stable machine-readable code of an error; codes are only ever added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body or the query string is not of the expected shape.
    Malformed,
    /// 400: one field is invalid; `field` names it.
    InvalidField,
    /// 401: no token, or an unknown one.
    Unauthenticated,
    /// 401: the caller's customer is not active.
    CustomerInactive,
    /// 403: the token's role may not do this.
    Forbidden,
    /// 404: no such thing, or another customer's.
    NotFound,
    /// 409: it exists already, or it changed meanwhile.
    Conflict,
    /// 413: the body is larger than the limit.
    BodyTooLarge,
    /// 408: the body stopped arriving before it was complete.
    BodyTimeout,
    /// 422: a business rule refused the command.
    Rejected,
    /// 503: the store cannot take or serve requests now.
    Unavailable,
    /// 429: too many requests of this kind.
    RateLimited,
    /// 500: a bug or damage; details are in the server log.
    Internal,
    /// 503 with `Retry-After`: contention the command could not resolve in time; retry.
    Busy,
    /// 503 with `Retry-After` (`/healthz`): the read model is catching up with the log after
    /// a start; `position` and `head` say how far it is.
    CatchingUp,
    /// 409: the `command_id` was used before for another command (another route, body or
    /// caller); `field` is `command_id`. Nothing was recorded.
    CommandIdReused,
}

/// Every answer that is not a success: `{"error": code, "message": text, "field": name?}`;
/// `/healthz` while the read model catches up adds `status`, `position` and `head`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What kind of error.
    pub error: ErrorCode,
    /// What went wrong, for a person to read (pt-BR manual texts where the manual has one).
    pub message: String,
    /// The field (of the body, the path or the query) at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `catching_up` with that error (`/healthz`, whose `status` is `ok` once ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "catching_up")]
    pub status: Option<&'static str>,
    /// With a 401: the AVISO the terminal shows, line by line (`Problema encontrado na
    /// liberação!`, `Retorno do servidor:`, `CÓDIGO: 401`, `MENSAGEM: <message>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<String>>,
    /// With `catching_up`: the position the read model has applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// With `catching_up`: the position it must reach to be ready, the log's head when the
    /// server started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<Position>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) | ApiError::BadField { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated | ApiError::CustomerInactive => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::CommandIdReused(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Busy { .. } | ApiError::CatchingUp { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited(_) | ApiError::OverQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut answer = HttpResponse::build(self.status_code());
        match self {
            ApiError::Busy { retry_after_s, .. } | ApiError::OverQuota { retry_after_s, .. } => {
                answer.insert_header((actix_web::http::header::RETRY_AFTER, *retry_after_s));
            }
            ApiError::CatchingUp { .. } => {
                answer.insert_header((actix_web::http::header::RETRY_AFTER, BUSY_RETRY_AFTER_S));
            }
            ApiError::RateLimited(_) => {
                // Limits count fixed one-minute windows.
                answer.insert_header((actix_web::http::header::RETRY_AFTER, 60u32));
            }
            _ => {}
        }
        answer.json(self.body())
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
                        StoreError::Io { .. } => {
                            "the log cannot be written now (disk full or an I/O error): \
                             commands are refused; retry later"
                        }
                        StoreError::Poisoned(_) => {
                            "the log's disk failed to make a write durable (fdatasync): \
                             commands are refused until the server is restarted on a \
                             repaired disk (check-ins and queries are answered); retry later"
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
            AppError::CommandIdReused { .. } => ApiError::CommandIdReused(e.to_string()),
            AppError::Contention { .. }
            | AppError::CatchUpTimeout { .. }
            | AppError::CatchingUp { .. }
            | AppError::IdsBusy { .. } => {
                // Catching up is expected after a start and logged there with its progress,
                // not once per request.
                if matches!(e, AppError::CatchingUp { .. }) {
                    tracing::debug!(error = %e, "busy");
                } else {
                    tracing::warn!(error = %e, "busy");
                }
                ApiError::Busy {
                    message: format!("{e}; retry later"),
                    retry_after_s: BUSY_RETRY_AFTER_S,
                }
            }
            AppError::ViewStopped(_) => {
                tracing::error!(error = %e, "read model stopped");
                ApiError::Unavailable("the read model stopped; see the server log".into())
            }
            AppError::Derived(_) | AppError::IndexUnavailable(_) => {
                tracing::error!(error = %e, "log index unavailable");
                ApiError::Unavailable(
                    "the log index is unavailable (a restart rebuilds it); see the server log"
                        .into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;
    use ledger_events::StreamId;

    #[test]
    fn ids_taken_by_other_nodes_until_the_time_limit_answer_503_busy_with_retry_after() {
        let e: ApiError = AppError::IdsBusy {
            what: "license",
            waited_ms: 5003,
        }
        .into();
        let answer = e.error_response();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = answer
            .headers()
            .get(actix_web::http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(retry_after.as_deref(), Some("1"));
        let body = answer.into_body().try_into_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "busy", "{json}");
        let message = json["message"].as_str().unwrap();
        assert!(message.contains("license id"), "{message}");
        assert!(message.ends_with("retry later"), "{message}");
    }

    #[test]
    fn a_reused_command_id_answers_409_command_id_reused_naming_the_field() {
        let e: ApiError = AppError::CommandIdReused {
            command_id: uuid::Uuid::nil(),
        }
        .into();
        let answer = e.error_response();
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        let body = answer.into_body().try_into_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "command_id_reused", "{json}");
        assert_eq!(json["field"], "command_id", "{json}");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains("already used for another command"),
            "{message}"
        );
    }

    #[test]
    fn version_conflicts_a_late_read_model_and_one_catching_up_answer_503_busy_with_retry_after_too(
    ) {
        let busy = [
            AppError::Contention {
                stream: StreamId::license(ledger_events::LicenseId::new(7).unwrap()),
                attempts: 9,
            },
            AppError::CatchUpTimeout {
                position: 12,
                waited_ms: 5000,
            },
            AppError::CatchingUp {
                position: 12,
                head: 40,
                waited_ms: 5000,
            },
        ];
        for e in busy {
            let answer = ApiError::from(e).error_response();
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(answer
                .headers()
                .contains_key(actix_web::http::header::RETRY_AFTER));
        }
    }
}
