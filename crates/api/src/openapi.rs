//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! It is generated, not written: each handler carries its operation (`#[utoipa::path]`:
//! parameters, body, every status with its body), the types it answers with derive their
//! schemas (or are described in [`crate::schemas`] when another crate defines them), and
//! [`crate::router`] registers every route through `utoipa_axum::routes!`, which adds the
//! operation to the document as it adds the handler to the router, so a route cannot be served
//! undocumented. What is the same for the whole API is added here: the description, the bearer
//! key, and the events of an answer's stream. `tests/tests/api_openapi.rs` checks the real
//! responses of a running server against this document.

use crate::error::{ErrorBody, ErrorDetail};
use crate::schemas;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, Schema};

/// The name of the security scheme of every `/v1` operation (as `security` of [`ApiDoc`]
/// spells it).
pub const API_KEY: &str = "apiKey";

/// An example of an answer's event stream, as sent.
pub const ANSWER_EVENTS_EXAMPLE: &str = "event: message\nid: message\ndata: {\"conversation_id\":\"...\",\"user_message_id\":\"...\",\"message_id\":\"...\",\"request_id\":\"...\"}\n\n\
event: context\nid: context\ndata: {\"sources\":[{\"n\":1,\"chunk_id\":42,\"document_id\":\"...\",\"filename\":\"guide.md\",\"pages\":null,\"heading_path\":[\"Setup\"],\"score\":0.05}]}\n\n\
event: delta\nid: 19\ndata: {\"text\":\"Batches hold 64 [1]\"}\n\n\
event: usage\nid: usage\ndata: {\"model\":\"gpt-4o-mini\",\"prompt_tokens\":812,\"completion_tokens\":9,\"cost\":0.0001}\n\n\
event: done\nid: done\ndata: {\"finish_reason\":\"stop\",\"status\":\"complete\",\"citations\":[{\"n\":1,\"chunk_id\":42,\"document_id\":\"...\",\"filename\":\"guide.md\",\"pages\":null}]}\n\n";

/// The document's parts that belong to no one operation. The operations are added by
/// [`crate::router`] as it registers their routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ragpipe",
        description = "Upload documents, follow their ingestion, read their chunks, search them, ask \
            questions answered from them over server-sent events, and read model usage. Every /v1 \
            route takes a bearer API key; every error (unknown routes, methods not allowed, bodies \
            that are not JSON (415), too large (413) or malformed (400), URIs too long (414)) has \
            the shape {\"error\": {\"code\", \"message\"}}. A NUL character (\\u0000) in any string, \
            key or parameter is refused with 400 naming the field. Another user's id is a 404, \
            never a 403.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    security(("apiKey" = [])),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        schemas::AnswerEvent,
        schemas::MessageEvent,
        schemas::ContextEvent,
        schemas::DeltaEvent,
        schemas::UsageEvent,
        schemas::DoneEvent,
        schemas::ErrorEvent,
    )),
    modifiers(&ApiWide),
    tags(
        (name = "documents", description = "Upload documents and follow their ingestion"),
        (name = "conversations", description = "Ask questions answered from the caller's documents"),
        (name = "messages", description = "Questions, answers and answers' event streams"),
        (name = "search", description = "Search the caller's chunks"),
        (name = "usage", description = "Model usage and quotas"),
        (name = "operations", description = "Probes and this document; no key needed"),
    ),
)]
pub struct ApiDoc;

/// Adds what is the same for the whole API: the bearer key scheme, and on each event stream
/// a pointer to the schema of its events.
struct ApiWide;

impl Modify for ApiWide {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `ragpipe keys create` (starts with `rp_`)"))
                    .build(),
            ),
        );
    }
}

/// The finished document: every operation's stream of server-sent events names the schema of
/// its events (`x-events`, a JSON Schema extension OpenAPI tools pass through), an optional
/// body (`Option<T>` in `request_body`) is described as `T`, not required, rather than as `T`
/// or `null`, and the operations routes opt out of the bearer key.
pub(crate) fn finish(mut openapi: OpenApi) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if !path.starts_with("/v1/") {
                operation.security = Some(Vec::new());
            }
            if let Some(RefOr::T(body)) = &mut operation.request_body {
                for content in body.content.values_mut() {
                    if let RefOr::T(content) = content
                        && let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema
                        && one_of.items.len() == 2
                        && let Some(reference) = one_of.items.iter().find(|i| matches!(i, RefOr::Ref(_)))
                    {
                        content.schema = Some(reference.clone());
                    }
                }
            }
            for response in operation.responses.responses.values_mut() {
                let RefOr::T(response) = response else { continue };
                if let Some(RefOr::T(content)) = response.content.get_mut("text/event-stream") {
                    *content = event_stream(content.example.take());
                }
            }
        }
    }
    openapi
}

/// The content of an answer's event stream.
fn event_stream(example: Option<serde_json::Value>) -> utoipa::openapi::Content {
    let mut extensions = utoipa::openapi::extensions::Extensions::default();
    extensions.insert(
        "x-events".to_owned(),
        serde_json::json!({ "$ref": "#/components/schemas/AnswerEvent" }),
    );
    let schema = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some("`event: <name>`, `id: <id>`, `data: <JSON>` per event"))
        .extensions(Some(extensions))
        .build();
    ContentBuilder::new()
        .schema(Some(RefOr::T(Schema::Object(schema))))
        .example(example)
        .build()
}
