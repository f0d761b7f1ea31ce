//! `cargo xtask <task>`: the project's tasks. One module per task.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(other) => anyhow::bail!("unknown task {other:?}; tasks: (none yet)"),
        None => anyhow::bail!("usage: cargo xtask <task>"),
    }
}
