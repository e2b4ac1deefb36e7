//! `GET /openapi.json`: the OpenAPI 3 document of the API, committed as
//! `crates/mlaudit-server/openapi.json` and checked against the router by the tests.

use axum::http::header;
use axum::response::IntoResponse;

/// The document's text.
pub fn document() -> &'static str {
    include_str!("../openapi.json")
}

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
