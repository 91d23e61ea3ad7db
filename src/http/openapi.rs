//! The OpenAPI document, generated from the handlers and types, and the route that serves it.

use axum::{
    body::Bytes,
    http::{header::CONTENT_TYPE, HeaderValue},
    response::IntoResponse,
    Extension,
};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::envelope::{ErrorEnvelope, Pagination, SuccessMeta};

/// The served document, serialized once when the router is built.
#[derive(Clone)]
pub struct OpenApiJson(pub Bytes);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Neo Public API — session tokens",
        description = "Mints short-lived JWTs bound to one chat session. Every response is wrapped in a `{data, meta}` envelope; errors use `{error: {code, message, details?}, meta: {request_id}}`. Authenticate with a `Bearer neo_sk_<env>_<secret>` API key (service account) or a Microsoft Entra ID access token (dashboard user)."
    ),
    servers((url = "https://api.neoagent.io")),
    components(schemas(ErrorEnvelope, SuccessMeta, Pagination)),
    modifiers(&BearerAuth),
    tags(
        (name = "Meta", description = "Service metadata — health, OpenAPI, JWKS."),
        (name = "Chat", description = "End-user chat session tokens."),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>` where `<token>` is either a `neo_sk_<env>_<secret>` API key (service account) or a Microsoft Entra ID access token (dashboard user).",
                    ))
                    .build(),
            ),
        );
    }
}

#[utoipa::path(
    get,
    path = "/public-api/openapi.json",
    operation_id = "public_api.openapi_get",
    tag = "Meta",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json"))
)]
pub async fn openapi_json(
    Extension(OpenApiJson(document)): Extension<OpenApiJson>,
) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        document,
    )
}
