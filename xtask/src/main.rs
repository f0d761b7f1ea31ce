//! `cargo xtask <task>`: a flat match over the tasks; each lives in a module
//! of the xtask library.

use std::process::ExitCode;

const TASKS: &str = "tasks:
  vm [--timeout SECS] [--kernel VMLINUZ --modules DIR] -- COMMAND [ARGS...]
                boot a kernel with sch_plug under qemu and run COMMAND in it
  setup-qdiscs [--dev lo] [--classifier fw|u32] [--limit BYTES] [--source ADDR|any]...
                build `qdisc` and run `qdisc setup` (through sudo when not root)
  demo [--requests N] [--ab-requests N] [--out DIR]
                the seed's experiment: baseline vs reloading every 100 ms, c=1,
                table beside the seed's figures, plots (host if it has sch_plug, else VM)
  bench [--requests N] [--concurrency 1,32] [--strategy none,plug] [--ab-requests N] [--out DIR]
                the same for each concurrency and strategy
  bench-plug [--iterations N] [--spawns N]
                median plug+release cost in-process vs spawning tc, host and VM";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("vm") => {
            xtask::vm::main(&args[1..]).map(|code| ExitCode::from(code.clamp(0, 255) as u8))
        }
        Some("setup-qdiscs") => xtask::tasks::setup_qdiscs(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("demo") => xtask::bench::demo(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("bench") => xtask::bench::bench(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("bench-plug") => xtask::tasks::bench_plug(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n{TASKS}")),
        None => Err(anyhow::anyhow!("usage: cargo xtask <task>\n{TASKS}")),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}
