//! `GET /openapi.json`: the OpenAPI 3.1 document of this HTTP API,
//! `crates/server/openapi.json`, compiled in and served as is.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, checked in next to `Cargo.toml`.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;

    /// Every `(method, path)` of the routing table, read from its source
    /// (`.route("/path", get(…).post(…))`), paths in OpenAPI's `{param}`
    /// spelling. Reading the source keeps this list from going stale: a
    /// route added to the table without the document fails the test.
    fn routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let mut out = BTreeSet::new();
        for chunk in source.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a path literal");
            let path = path
                .split('/')
                .map(|s| match s.strip_prefix(':') {
                    Some(name) => format!("{{{name}}}"),
                    None => s.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            // The handlers of this route: up to the parenthesis that
            // closes `.route(`.
            let mut depth = 1;
            let end = chunk
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("a closed .route(");
            let handlers = &chunk[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                let call = format!("{method}(");
                let found = handlers.match_indices(&call).any(|(i, _)| {
                    let before = i.checked_sub(1).map(|j| handlers.as_bytes()[j]);
                    !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                if found {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_describes_every_route_and_nothing_else() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "an OpenAPI 3 document"
        );
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("a path item") {
                assert!(
                    operation["responses"]["200"].is_object(),
                    "{method} {path} documents its 200 answer"
                );
                documented.insert((method.clone(), path.clone()));
            }
        }
        let routed = routes();
        assert!(routed.len() >= 13, "the route scan found {routed:?}");
        assert_eq!(
            routed, documented,
            "the routing table (left) and openapi.json (right) differ"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        fn walk(doc: &Value, node: &Value) {
            match node {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("a local $ref");
                        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
                    }
                    map.values().for_each(|v| walk(doc, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        walk(&doc, &doc);
    }
}
