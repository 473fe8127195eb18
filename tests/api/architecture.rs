//! Module boundaries, checked over `cargo metadata`: a module crate depends on
//! the kernel and third-party crates only; the kernel depends on no module.

use std::process::Command;

#[test]
fn modules_depend_on_the_kernel_only_and_the_kernel_on_no_module() {
    let out = crate::helpers::run_ok(
        Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let modules: Vec<&str> = packages
        .iter()
        .filter(|p| p["manifest_path"].as_str().unwrap().contains("/modules/"))
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        modules.contains(&"agora-kernel") && modules.len() >= 5,
        "{modules:?}"
    );
    let mut violations = Vec::new();
    for p in packages
        .iter()
        .filter(|p| modules.contains(&p["name"].as_str().unwrap()))
    {
        let name = p["name"].as_str().unwrap();
        for dep in p["dependencies"].as_array().unwrap() {
            let dep = dep["name"].as_str().unwrap();
            // A crate's dev-dependency on itself (to turn on its test features) is no edge.
            let forbidden = dep != name
                && modules.contains(&dep)
                && (name == "agora-kernel" || dep != "agora-kernel");
            if forbidden {
                violations.push(format!("{name} → {dep}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "module boundary violations: {violations:?}"
    );
}
