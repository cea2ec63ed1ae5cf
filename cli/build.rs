//! Release builds on Linux x86-64 lay out the functions a sidecar runs together at the start
//! of `.text` (`sidecar.order`, written by `scripts/sidecar-order.sh`), linked with LLVM's lld
//! and its `--symbol-ordering-file`: the one binary holds the control plane, gateways, lab and
//! Kubernetes client too, and a sidecar that touched a few functions in each 64 KiB run of
//! their code kept most of the image resident. Other builds (debug, tests, other targets, no
//! lld) link as usual; the layout changes nothing but addresses.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=sidecar.order");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let order =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("sidecar.order");
    if !release || target != "x86_64-unknown-linux-gnu" || !order.exists() {
        return;
    }
    let lld = std::process::Command::new("ld.lld")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !lld {
        println!(
            "cargo:warning=ld.lld not found (Debian: apt install lld): the sidecar's functions are not laid out together, so each sidecar keeps more of the binary resident"
        );
        return;
    }
    println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names of functions that changed since the list was made are skipped, not errors.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
