#![allow(dead_code)] // shared by several test files, each using part of it
//! The routes the server mounts, read from its sources: every `.route(` of the `configure`
//! functions of src/http/routes.rs (inside `/v1`, except the few at the root), of
//! src/http/console_api.rs (inside `/v1`) and of src/http/console.rs (at the root). Tests
//! that must cover every route (the role matrix, the OpenAPI description) compare with this.

/// Routes mounted at the root rather than inside `/v1`.
const AT_ROOT: &[&str] = &["/healthz", "/metrics", "/openapi.json"];

/// Every `.route(` of the `configure` function in `source` (which ends where `end` starts), as
/// (method, path with `prefix`, unless the path is one of [`AT_ROOT`]).
fn routes_of(source: &str, end: &str, prefix: &str) -> Vec<(String, String)> {
    let configure = source
        .split("pub fn configure")
        .nth(1)
        .and_then(|s| s.split(end).next())
        .expect("the file has `configure`");
    let compact: String = configure.split_whitespace().collect();
    let mut mounted = Vec::new();
    for piece in compact.split(".route(").skip(1) {
        let path = piece.split('"').nth(1).unwrap();
        let method = piece.split("web::").nth(1).unwrap();
        let method = method.split('(').next().unwrap().to_uppercase();
        let path = if AT_ROOT.contains(&path) {
            path.to_owned()
        } else {
            format!("{prefix}{path}")
        };
        mounted.push((method, path));
    }
    mounted
}

/// Every mounted route as (method, pattern), patterns as the sources write them (`{action}`
/// not expanded).
pub fn mounted() -> Vec<(String, String)> {
    let routes = include_str!("../../src/http/routes.rs");
    let mut mounted = routes_of(routes, "\nasync fn not_found", "/v1");
    assert!(mounted.len() >= 20, "parsed {mounted:?}");
    assert!(
        routes.contains(".configure(super::console_api::configure)")
            && routes.contains(".configure(super::console::configure)"),
        "routes.rs mounts the console's routes"
    );
    let console_api = routes_of(
        include_str!("../../src/http/console_api.rs"),
        "\n}\n",
        "/v1",
    );
    let console = routes_of(include_str!("../../src/http/console.rs"), "\n}\n", "");
    assert!(
        console_api.len() >= 6 && console.len() >= 2,
        "parsed {console_api:?} {console:?}"
    );
    mounted.extend(console_api);
    mounted.extend(console);
    mounted
}
