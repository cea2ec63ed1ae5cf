//! Writes every target's seeds to `<dir>/<target>/seed-<n>` (`make fuzz` runs it before the
//! fuzzer, into `fuzz/corpus`). A seed file already there is kept: seeds hold fresh keys, and
//! the checked-in corpus should not change with every run.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".to_owned());
    for (name, _) in meshfed_fuzz_targets::TARGETS {
        let folder = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&folder)?;
        for (i, seed) in meshfed_fuzz_targets::seeds::seeds(name).iter().enumerate() {
            let file = folder.join(format!("seed-{i}"));
            if !file.exists() {
                std::fs::write(file, seed)?;
            }
        }
    }
    Ok(())
}
