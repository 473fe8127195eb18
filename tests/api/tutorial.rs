//! docs/tutorial.md and the README's flow run as written: their `sh` blocks,
//! in order, as one bash script (`set -euo pipefail`) against the real binary
//! serving on free ports, with `agora` on the PATH and the server's log in
//! `agora.log`.

use std::process::{Command, Stdio};

/// The ```sh blocks of a Markdown page, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block");
    blocks
}

#[test]
fn the_tutorial_runs_as_written() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/tutorial.md")).unwrap();
    let blocks = sh_blocks(&page);
    assert!(blocks.len() >= 8, "found {} sh blocks", blocks.len());
    run_against_a_real_agora(&blocks, "docs/tutorial.md");
}

/// The README's "Try the whole flow", with `cargo run -q --` as the binary.
#[test]
fn the_readme_flow_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## Try the whole flow")
        .expect("the README's flow section");
    let section = &readme[start..];
    let end = section[2..].find("\n## ").map_or(section.len(), |i| i + 2);
    let blocks: Vec<String> = sh_blocks(&section[..end])
        .into_iter()
        .map(|b| b.replace("cargo run -q -- ", "agora "))
        .collect();
    assert!(blocks.len() >= 2, "found {} sh blocks", blocks.len());
    run_against_a_real_agora(&blocks, "README.md");
}

/// Run `blocks` as one bash script against a fresh agora; fail on any error.
fn run_against_a_real_agora(blocks: &[String], page: &str) {
    let curl = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(curl.is_ok_and(|s| s.success()), "the tutorial needs curl");

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = crate::helpers::agora_command(dir.path());
    cmd.stdout(std::fs::File::create(dir.path().join("agora.log")).unwrap());
    let mut agora = crate::helpers::AgoraProcess::start(cmd);

    // The page talks to the default addresses; point them at this instance.
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", agora.port))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{}", agora.admin_port));
    let script_path = dir.path().join("tutorial.sh");
    std::fs::write(&script_path, &script).unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_agora"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = Command::new("bash");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AGORA")) {
        bash.env_remove(k);
    }
    let out = bash
        .arg("-x")
        .arg(&script_path)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("AGORA__HTTP__ADDR", format!("127.0.0.1:{}", agora.port))
        .output()
        .unwrap();
    let stopped = agora.stop().success();
    assert!(
        out.status.success(),
        "{page} failed ({}).\n--- stdout\n{}\n--- stderr (bash -x)\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stopped, "agora did not stop cleanly");
}
