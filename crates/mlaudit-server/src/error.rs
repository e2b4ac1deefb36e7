//! The one error type of the HTTP API: a status and a JSON body for the client
//! (`{"error": {"code", "message", "details"?}}`), full detail in the server log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mlaudit_store::StoreError;
use serde_json::{json, Value};

/// An API error. Every variant maps to one status and a stable `code`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed request: bad JSON, bad UTF-8, bad parameter.
    #[error("{0}")]
    BadRequest(String),
    /// No valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The token's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the current state (e.g. a token name in use).
    #[error("{0}")]
    Conflict(String),
    /// The requested event, checkpoint or route does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The body's content type is not one the endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A size limit was exceeded; `limit` names it.
    #[error("{message}")]
    TooLarge {
        limit: &'static str,
        max: u64,
        message: String,
    },
    /// The request (or its body) did not complete within its time limit.
    #[error("{0}")]
    Timeout(String),
    /// The principal made more requests than its rate allows; retry after this long.
    #[error("too many requests: retry in {} s", .0.as_secs().max(1))]
    TooManyRequests(std::time::Duration),
    /// A well-formed body of a type the endpoint does not take (an unknown OpenLineage event
    /// type, say): nothing was written.
    #[error("{0}")]
    Unprocessable(String),
    /// The endpoint exists but is not enabled in this server's configuration.
    #[error("{0}")]
    NotEnabled(String),
    /// Events that failed validation: nothing of the batch was written.
    #[error("{count} invalid event(s); nothing was written")]
    Invalid { count: usize, errors: Vec<Value> },
    /// The store failed; the client sees a generic message.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// Anything else on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Whether this is the client's fault (a 4xx).
    pub fn is_client_error(&self) -> bool {
        self.status_and_code().0.is_client_error()
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_events"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::NotEnabled(_) => (StatusCode::NOT_FOUND, "not_enabled"),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Store(StoreError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Store(StoreError::Conflict { .. }) => (StatusCode::CONFLICT, "id_conflict"),
            ApiError::Store(StoreError::Rejected { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_events")
            }
            ApiError::Store(StoreError::DiskFull(_)) => {
                (StatusCode::INSUFFICIENT_STORAGE, "disk_full")
            }
            ApiError::Store(StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Store(StoreError::DiskFull(_)) => {
                tracing::error!(error = %self, "request refused: the disk is full");
                "the log's disk is full: nothing of this request was stored or acknowledged; retry once space is freed".to_owned()
            }
            ApiError::Store(StoreError::Unavailable(_)) => {
                tracing::error!(error = %self, "request refused for now");
                "the server ran out of a resource for a moment: nothing of this request was stored or acknowledged; retry".to_owned()
            }
            _ if status.is_server_error() => {
                tracing::error!(error = %self, "request failed");
                "the server could not complete the request; see its log".to_owned()
            }
            _ => self.to_string(),
        };
        let mut error = json!({ "code": code, "message": message });
        match &self {
            ApiError::Invalid { errors, .. } => error["details"] = Value::Array(errors.clone()),
            ApiError::TooLarge { limit, max, .. } => {
                error["details"] = json!({ "limit": limit, "max": max })
            }
            ApiError::Store(StoreError::Conflict { index, id }) => {
                error["details"] = json!({ "index": index, "id": id.to_string() })
            }
            _ => {}
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        let retry_after = match &self {
            ApiError::TooManyRequests(wait) => Some(wait.as_secs().max(1)),
            ApiError::Store(StoreError::Unavailable(_) | StoreError::DiskFull(_)) => Some(5),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
