//! The OpenAPI document, generated from the handlers and types, and the route that serves it.

use axum::{
    body::Bytes,
    http::{header::CONTENT_TYPE, HeaderValue},
    response::IntoResponse,
    Extension,
};
use serde_json::{json, Value};
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
        description = "Mints short-lived JWTs bound to one chat session. Every response is wrapped in a `{data, meta}` envelope; errors use `{error: {code, message, details?}, meta: {request_id}}`. Authenticate with a `Bearer neo_sk_<env>_<secret>` API key (service account) or a Microsoft Entra ID access token (dashboard user).\n\nStart with **`POST /public-api/sessions`** (mint an end-user session token): the one call a relay or the dashboard makes for each chat. The chat service verifies the token it returns offline, with the keys at `/.well-known/jwks.json`.\n\n- Every answer carries `X-Request-Id`, also in `meta.request_id` (a UUID the caller sends in that header is kept).\n- `429` and `503` answers carry `Retry-After`; authenticated routes answer the `RateLimit` and `RateLimit-Policy` headers.\n- Lists are keyset-paginated: pass `meta.pagination.next_cursor` as `cursor` while `has_more`."
    ),
    servers((url = "https://api.neoagent.io")),
    components(schemas(ErrorEnvelope, SuccessMeta, Pagination)),
    modifiers(&BearerAuth),
    // In the order a reader needs them (renderers follow it): the mint, alone in its tag, first.
    tags(
        (name = "Chat", description = "End-user chat session tokens: the mint."),
        (name = "Tokens", description = "Minted tokens: list, read, revoke one or a session's, introspect, and the revocation feed verifiers follow."),
        (name = "Directory", description = "The tenants, end companies, agents and chat sessions the platform describes, which the mint rules read."),
        (name = "Meta", description = "Service metadata — health, OpenAPI, this page, JWKS, discovery, metrics."),
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
                        "`Authorization: Bearer <token>` where `<token>` is either a `neo_sk_<env>_<secret>` API key (service account) or a Microsoft Entra ID access token (dashboard user). An API key holds scopes (`sessions:mint`, `tokens:manage`, `revocations:read`, `directory:read`, `directory:write`; keys made before scopes, and keys made without `--scope`, hold the first four; `directory:write` is for the platform's keys only); a dashboard user holds the first four; a route used without its scope answers 403 `insufficient_scope` naming it in `error.details.required_scope` and in `WWW-Authenticate`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basicAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "`/oauth2/introspect` only: an API key as OAuth 2.0 client credentials (`client_secret_basic`, RFC 6749 §2.3.1): the user name is the key's id (`key_…`, as `api-key create` and `api-key list` show it), the password the key; each form-urlencoded before they are joined and base64-encoded.",
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
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json", body = Object))
)]
pub async fn openapi_json(
    Extension(OpenApiJson(document)): Extension<OpenApiJson>,
) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        document,
    )
}

/// The error codes each status can carry (the `code` of the envelope), as documented enums.
pub(crate) const ERROR_CODES: &[(&str, &[&str])] = &[
    ("400", &["invalid_json", "bad_request"]),
    ("401", &["missing_credentials", "invalid_credentials"]),
    ("403", &["insufficient_scope", "forbidden"]),
    (
        "404",
        &[
            "session_not_found",
            "token_not_found",
            "tenant_not_found",
            "end_company_not_found",
            "agent_not_found",
            "not_found",
        ],
    ),
    ("405", &["method_not_allowed"]),
    (
        "409",
        &[
            "session_closed",
            "idempotency_key_reused",
            "idempotency_key_in_use",
            "entra_tenant_id_taken",
            "platform_tenant_immutable",
            "agent_of_another_tenant",
            "session_of_another_tenant",
            "neo_support_session_exists",
            "end_company_in_use",
            "tenant_in_use",
        ],
    ),
    ("413", &["payload_too_large"]),
    ("415", &["unsupported_media_type"]),
    (
        "422",
        &[
            "validation_failed",
            "invalid_end_company",
            "invalid_agent_ids",
        ],
    ),
    ("429", &["rate_limited"]),
    ("500", &["internal_error"]),
    (
        "503",
        &[
            "database_unavailable",
            "entra_unavailable",
            "timeout",
            "service_unavailable",
            "too_many_connections",
        ],
    ),
];

/// The document as served: [`document_responses`] applied, and the paths in the order the
/// router registered them (a list before its items), each path's operations in the order get,
/// put, post, delete. Renderers list a tag's operations in the document's order, and this order
/// reads better than the alphabetical one a JSON object would otherwise get.
pub fn served_document(openapi: &utoipa::openapi::OpenApi) -> Vec<u8> {
    let path_order: Vec<&String> = openapi.paths.paths.keys().collect();
    let mut document = serde_json::to_value(openapi).unwrap_or_default();
    document_responses(&mut document);
    let mut out = Vec::new();
    write_ordered(&mut out, &document, &path_order);
    out
}

/// The document's own keys in the order of the OpenAPI specification's examples.
const ROOT_ORDER: [&str; 7] = [
    "openapi",
    "info",
    "servers",
    "security",
    "tags",
    "paths",
    "components",
];

/// Operations within a path item, in reading order; any other key of the item comes first.
const METHOD_ORDER: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "options", "head", "trace",
];

/// `document` as JSON, its own keys in `ROOT_ORDER`, `paths` in `path_order` (any path not in it
/// last).
fn write_ordered(out: &mut Vec<u8>, document: &Value, path_order: &[&String]) {
    let (Some(root), Some(paths)) = (
        document.as_object(),
        document.get("paths").and_then(Value::as_object),
    ) else {
        let _ = serde_json::to_writer(&mut *out, document);
        return;
    };
    let mut ordered_paths: Vec<(&String, &Value)> = path_order
        .iter()
        .filter_map(|path| paths.get_key_value(path.as_str()))
        .collect();
    ordered_paths.extend(paths.iter().filter(|(path, _)| !path_order.contains(path)));
    let rank = |key: &str| ROOT_ORDER.iter().position(|k| *k == key);
    let mut root: Vec<(&String, &Value)> = root.iter().collect();
    root.sort_by_key(|(key, _)| rank(key).unwrap_or(ROOT_ORDER.len()));
    write_object(out, root.into_iter(), |out, key, _| {
        if key != "paths" {
            return false;
        }
        write_object(out, ordered_paths.iter().copied(), |out, _, item| {
            let Some(item) = item.as_object() else {
                return false;
            };
            let rank = |key: &str| METHOD_ORDER.iter().position(|m| *m == key);
            let mut entries: Vec<(&String, &Value)> = item.iter().collect();
            // Stable: the non-method keys keep their order, ahead of the operations.
            entries.sort_by_key(|(key, _)| rank(key).map_or(0, |r| r + 1));
            write_object(out, entries.into_iter(), |_, _, _| false);
            true
        });
        true
    });
}

/// Writes `{"key": value, ...}` in the entries' order; `special` writes a value itself (and
/// says so) or leaves it to serde_json.
fn write_object<'a>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    mut special: impl FnMut(&mut Vec<u8>, &str, &'a Value) -> bool,
) {
    out.push(b'{');
    for (index, (key, value)) in entries.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        if !special(out, key, value) {
            let _ = serde_json::to_writer(&mut *out, value);
        }
    }
    out.push(b'}');
}

fn header(description: &str) -> Value {
    json!({ "description": description, "schema": { "type": "string" } })
}

/// Adds what the generated document cannot say by itself: per status, the error codes as an
/// enum and an example envelope; the headers clients rely on (`X-Request-Id` on every response,
/// `Retry-After` on 429 and 503, `WWW-Authenticate` on 401 and 403 of authenticated routes, the
/// `RateLimit` pair where the per-principal limit applies).
pub fn document_responses(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            let authenticated = operation.get("security").is_some();
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let Some(response) = response.as_object_mut() else {
                    continue;
                };
                let headers = response
                    .entry("headers")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                let Some(headers) = headers else { continue };
                headers.insert(
                    "X-Request-Id".into(),
                    header("The request id (a caller's UUID is kept); also `meta.request_id`."),
                );
                if status == "429" || status == "503" {
                    headers.insert(
                        "Retry-After".into(),
                        header("Seconds to wait before retrying."),
                    );
                }
                if authenticated && (status == "401" || status == "403") {
                    headers.insert(
                        "WWW-Authenticate".into(),
                        header("An RFC 6750 Bearer challenge (at `/oauth2/introspect`, a Basic one for Basic credentials, and both when none were sent)."),
                    );
                }
                if authenticated && (status == "200" || status == "429") {
                    headers.insert(
                        "RateLimit-Policy".into(),
                        header("`\"per-principal\";q=<per minute>;w=60;burst=<burst>` (or `\"failed-auth-per-ip\"` on a per-address 429)."),
                    );
                    headers.insert(
                        "RateLimit".into(),
                        header("`\"<limit>\";r=<left now>;t=<seconds until full>`."),
                    );
                }
                let Some((_, codes)) = ERROR_CODES.iter().find(|(s, _)| *s == status) else {
                    continue;
                };
                let is_envelope = response
                    .get("content")
                    .and_then(|c| c.get("application/json"))
                    .and_then(|c| c.get("schema"))
                    .and_then(|s| s.get("$ref"))
                    .and_then(Value::as_str)
                    == Some("#/components/schemas/ErrorEnvelope");
                if !is_envelope {
                    continue;
                }
                response.insert(
                    "content".into(),
                    json!({
                        "application/json": {
                            "schema": {
                                "allOf": [
                                    { "$ref": "#/components/schemas/ErrorEnvelope" },
                                    { "type": "object", "properties": { "error": {
                                        "type": "object",
                                        "properties": { "code": { "type": "string", "enum": codes } }
                                    } } }
                                ]
                            },
                            "example": {
                                "error": { "code": codes[0], "message": "(a sentence for humans)" },
                                "meta": { "request_id": "5b0a1f7e-8d2c-4c61-9a53-2f4d7e9b1c30" }
                            }
                        }
                    }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_order_changes_nothing_but_the_order() {
        use utoipa::openapi::{
            path::{HttpMethod, OperationBuilder, PathItemBuilder},
            PathsBuilder,
        };
        let operation = |id: &str| OperationBuilder::new().operation_id(Some(id)).build();
        let mut openapi = ApiDoc::openapi();
        openapi.paths = PathsBuilder::new()
            .path(
                "/z/list",
                PathItemBuilder::new()
                    .operation(HttpMethod::Get, operation("list"))
                    .build(),
            )
            .path(
                "/a/{item}",
                PathItemBuilder::new()
                    .operation(HttpMethod::Delete, operation("delete"))
                    .operation(HttpMethod::Put, operation("put"))
                    .operation(HttpMethod::Get, operation("get"))
                    .build(),
            )
            .build();
        let mut expected = serde_json::to_value(&openapi).unwrap();
        document_responses(&mut expected);
        let served = served_document(&openapi);
        let parsed: Value = serde_json::from_slice(&served).unwrap();
        assert_eq!(parsed, expected);
        let text = String::from_utf8(served).unwrap();
        assert!(text.starts_with("{\"openapi\":"), "{text}");
        let at = |needle: &str| text.find(needle).unwrap();
        assert!(at("\"/z/list\"") < at("\"/a/{item}\""), "{text}");
        let item = &text[at("\"/a/{item}\"")..];
        let at = |needle: &str| item.find(needle).unwrap();
        assert!(at("\"get\"") < at("\"put\"") && at("\"put\"") < at("\"delete\""));
    }
}
