//! The project's guides, run: their `sh` blocks in order, with the test's
//! values, through bash with the test servers' kubectl and helm first on
//! the PATH, so every command a reader copies has run on the real servers.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's checkout.
pub fn repo() -> PathBuf {
    crate::checkout::root().expect("the project's checkout")
}

/// The `sh` blocks of the guide at `path` (relative to the checkout), the
/// first (the reader's values, starting `# Your values.`) left out.
pub fn steps(path: &str) -> Vec<String> {
    let guide = std::fs::read_to_string(repo().join(path)).expect("the guide");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in guide.lines() {
        match (&mut current, line) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(block), "```") => {
                blocks.push(block.join("\n"));
                current = None;
            }
            (Some(block), line) => block.push(line),
            (None, _) => {}
        }
    }
    assert!(
        blocks
            .first()
            .is_some_and(|b| b.starts_with("# Your values.")),
        "{path} starts with the reader's values"
    );
    blocks.remove(0);
    blocks
}

/// Runs `script` with bash (failing on the first failed command) and
/// `vars`, with the test servers' kubectl and helm first on the PATH;
/// returns its output, or the script and its output when it failed.
pub fn bash(script: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let bin = repo().join(".e2e-bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo())
        .env("PATH", path)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{script}\nfailed:\n{text}"))
    }
}

/// Runs helm with `args` against the cluster of `kubeconfig`.
pub fn helm(args: &[&str], kubeconfig: &Path) -> Result<String, String> {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    bash(
        &format!("helm {}", quoted.join(" ")),
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    )
}
