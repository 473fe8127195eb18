//! The checked-in spec is the generated one.

#[test]
fn the_checked_in_openapi_spec_matches_the_code() {
    let generated = agora::openapi::spec_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    // Compared as JSON values: key order may differ with serde_json's
    // `preserve_order` feature, which some dependency may switch on.
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap_or_default();
    let generated: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date; regenerate it with:\n    cargo run -- openapi > openapi/openapi.json"
    );
}

#[test]
fn every_operation_declares_its_error_bodies_as_problems() {
    let spec: serde_json::Value = serde_json::from_str(&agora::openapi::spec_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status} is not declared as problem+json"
                    );
                }
            }
        }
    }
}
