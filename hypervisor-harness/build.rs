//! Builds the test kernel (for x86_64-target.json, with build-std) so that one `cargo build` from
//! the workspace root produces both the harness and the image it boots. The kernel's path reaches
//! the harness as `KERNEL_IMAGE`, its default `--kernel`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables kept for the nested cargo; everything else cargo set for this build script (target,
/// rustflags, clippy's wrapper, ...) belongs to the host build and would break the kernel's.
const KEEP: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "TMPDIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_AUTO_INSTALL",
    "CARGO_NET_OFFLINE",
    "CARGO_TERM_COLOR",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "no_proxy",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("harness lives in the workspace")
        .to_path_buf();
    for watched in [
        "kernel/src",
        "kernel/Cargo.toml",
        "kernel/build.rs",
        "kernel/linker.ld",
        "drivers/src",
        "drivers/Cargo.toml",
        "x86_64-target.json",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SKIP_KERNEL_BUILD");

    let target_dir = root.join("target").join("kernel");
    let image = target_dir
        .join("x86_64-target")
        .join("release")
        .join("kernel");
    println!("cargo:rustc-env=KERNEL_IMAGE={}", image.display());
    if env::var_os("SKIP_KERNEL_BUILD").is_some() {
        return;
    }
    build_kernel(&root, &target_dir);
}

fn build_kernel(root: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env_clear();
    for key in KEEP {
        if let Some(v) = env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.current_dir(root).args([
        "build",
        "--manifest-path",
        "kernel/Cargo.toml",
        "--release",
        "--target",
        "x86_64-target.json",
        "-Zbuild-std=core,alloc",
        "-Zbuild-std-features=compiler-builtins-mem",
        "-Zjson-target-spec",
        "--target-dir",
    ]);
    cmd.arg(target_dir);
    let out = cmd.output().expect("failed to run cargo for the kernel");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("building the kernel failed (run `cargo kernel` to see why)");
    }
}
