//! The OpenAPI 3.1 description of the whole HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the code: every handler carries a `#[utoipa::path]` next to it,
//! request and answer bodies are the very types the handlers parse and serialize (their
//! schemas derived from them, the value types' from `ledger-events`), and query parameters
//! are the structs the [`Query`](super::extract::Query) extractor fills. What every route can
//! answer besides its own (a bad token, a wrong role, a malformed query, the store down) is
//! added here once, by [`CommonErrors`], in the one error shape. `tests/api_openapi.rs`
//! checks that the description lists exactly the routes the server mounts.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Object, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Required, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "license-ledger",
        description = "Event-sourced license ledger: terminals check in, support acts on \
                       customers, contracts, licenses and contingencies, auditors read and \
                       verify the log. Every error answers `{\"error\", \"message\", \"field\"?}`.",
    ),
    paths(
        super::routes::healthz,
        super::metrics::metrics,
        serve,
        super::routes::keys,
        super::checkin::check_in,
        super::routes::register_customer,
        super::routes::customer_licenses,
        super::routes::customer_action,
        super::routes::set_profile,
        super::routes::sign_contract,
        super::routes::contract_action,
        super::routes::grant_license,
        super::routes::list_licenses,
        super::routes::get_license,
        super::routes::history,
        super::routes::change_resources,
        super::routes::license_action,
        super::routes::enter_contingency,
        super::routes::list_contingencies,
        super::routes::clear_contingency,
        super::routes::offline_activation,
        super::offline_key::offline_key,
        super::routes::emergency_release,
        super::routes::create_token,
        super::routes::events,
        super::sse::events_stream,
        super::routes::audit_head,
        super::relay_api::feed,
        super::relay_api::stream,
        super::relay_api::certificate,
        super::relay_api::forward,
        super::console_api::session,
        super::console_api::customers,
        super::console_api::license_table,
        super::console_api::search_events,
        super::console_api::dashboard,
        super::console_api::verify,
        super::console::index,
        super::console::asset,
    ),
    components(schemas(
        ErrorBody,
        super::routes::CustomerAction,
        super::routes::ContractAction,
        super::routes::LicenseAction,
        ledger_projections::view::LicenseStatus,
        ledger_projections::view::LicenseSortKey,
        super::routes::SortOrder,
    )),
    modifiers(&CommonErrors),
    security(("bearer" = [])),
    tags(
        (name = "terminals", description = "Check-ins and activations"),
        (name = "customers"), (name = "contracts"), (name = "licenses"),
        (name = "contingencies"),
        (name = "audit", description = "The raw log, its signed head, its verification"),
        (name = "relay", description = "A customer's on-premises relay"),
        (name = "console", description = "What the support and audit console reads"),
        (name = "service", description = "Health, metrics, tokens, this description"),
    )
)]
struct ApiDoc;

/// Adds the bearer scheme, and to every operation the errors any route can answer.
struct CommonErrors;

/// Errors every operation may answer, by kind of operation.
const PUBLIC: &[(&str, &str)] = &[];
const WITH_TOKEN: &[(&str, &str)] = &[
    ("401", "No token, or an unknown one."),
    (
        "403",
        "The token's role may not do this (or it is bound to another customer).",
    ),
    (
        "429",
        "Over a limit (`rate_limited`, with `Retry-After`): failed authentications from this \
         address, offline activations, event streams open per token or in all, or a write \
         quota of a terminal or relay token (`[quotas]`).",
    ),
    (
        "500",
        "A bug or damage; details are in the server log only.",
    ),
    (
        "503",
        "The store cannot serve this now (`unavailable`), or the request met contention it \
         could not resolve in time (`busy`: ids taken by other nodes, version conflicts, a read \
         model behind or still catching up with the log after a start; it comes with \
         `Retry-After`). Retry later, with the same `command_id`.",
    ),
];
const WITH_INPUT: &[(&str, &str)] = &[(
    "400",
    "A malformed body or query string, or an invalid field (`field` names it).",
)];
const WITH_BODY: &[(&str, &str)] = &[
    ("408", "The body stopped arriving (10 s without a byte)."),
    ("413", "The body is larger than 64 KiB."),
];

impl Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for item in api.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // An operation with `security(())` takes no token.
                let public = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                let has_input = op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add: Vec<(&str, &str)> = Vec::new();
                add.extend_from_slice(if public { PUBLIC } else { WITH_TOKEN });
                if has_input {
                    add.extend_from_slice(WITH_INPUT);
                }
                if op.request_body.is_some() {
                    add.extend_from_slice(WITH_BODY);
                }
                add_errors(op, &add);
                optional_body(op);
            }
        }
    }
}

fn error_response(status: &str, description: &str) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        utoipa::openapi::content::ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build(),
    );
    if status == "429" {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Object::with_type(Type::Integer))
                .description(Some("Seconds until the limit's window ends."))
                .build(),
        );
    }
    if status == "503" {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Object::with_type(Type::Integer))
                .description(Some(
                    "Sent with `busy`: seconds to wait before retrying the same command.",
                ))
                .build(),
        );
    }
    response.into()
}

fn add_errors(op: &mut Operation, errors: &[(&str, &str)]) {
    for (status, description) in errors {
        op.responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| error_response(status, description));
    }
}

/// `request_body = Option<T>` reads as "`T` or JSON `null`"; what the handlers take is "`T`,
/// or no body at all" (an empty body reads as `{}`): say that instead.
fn optional_body(op: &mut Operation) {
    let Some(body) = op.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
            let not_null: Vec<&RefOr<Schema>> =
                one_of.items.iter().filter(|item| !is_null(item)).collect();
            if let [only] = not_null.as_slice() {
                if one_of.items.len() == 2 {
                    content.schema = Some((*only).clone());
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

fn is_null(schema: &RefOr<Schema>) -> bool {
    matches!(schema, RefOr::T(Schema::Object(o))
        if o.schema_type == SchemaType::Type(Type::Null))
}

/// The description, rendered once.
pub fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"internal\", \"message\": \"{e}\"}}"))
    })
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 description of this API",
        content_type = "application/json")))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
