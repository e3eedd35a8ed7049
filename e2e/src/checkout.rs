//! The project's checkout, found when a binary or test runs rather than
//! fixed when it was compiled: a copied or moved checkout uses its own
//! binaries, CRDs and state, never the ones of the tree it was built in.

use std::path::{Path, PathBuf};

/// A file only the project's checkout has.
const MARKER: &str = "e2e/env/build.sh";

/// The checkout: found above the package directory cargo runs a test or
/// binary in (`CARGO_MANIFEST_DIR` at run time), else above the running
/// executable (`<checkout>/target/…`), else above the working directory.
pub fn root() -> anyhow::Result<PathBuf> {
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_exe().ok(),
        std::env::current_dir().ok(),
    ];
    starts
        .iter()
        .flatten()
        .find_map(|start| find_root(start))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find the project's checkout (a directory with {MARKER}) above the \
                 executable or the working directory; run from inside the checkout"
            )
        })
}

/// The nearest directory at or above `start` holding the checkout's marker.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join(MARKER).is_file())
        .map(Path::to_path_buf)
}

/// The debug build of the project binary `name` in this checkout.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    Ok(root()?.join("target/debug").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_checkout_above_a_path_wins() {
        let base = std::env::temp_dir().join(format!("checkout-test-{}", std::process::id()));
        let outer = base.join("outer");
        let inner = outer.join("copies/inner");
        for tree in [&outer, &inner] {
            std::fs::create_dir_all(tree.join("e2e/env")).expect("dirs");
            std::fs::write(tree.join(MARKER), "").expect("marker");
        }
        std::fs::create_dir_all(inner.join("target/debug")).expect("dirs");
        assert_eq!(find_root(&inner.join("target/debug")), Some(inner.clone()));
        assert_eq!(find_root(&outer.join("copies")), Some(outer.clone()));
        assert_eq!(find_root(&base), None);
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
