//! `cargo xtask <task>`: one clap subcommand per task; each lives in a
//! module of the xtask library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Project tasks: the VM harness, the demo, benchmarks, provisioning.
#[derive(Parser, Debug)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Boot a kernel with sch_plug under qemu and run COMMAND in it.
    Vm(xtask::vm::VmArgs),
    /// Build `qdisc` and run `qdisc setup ARGS...` (through sudo when not root).
    SetupQdiscs {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The seed's experiment: baseline vs reloading every 100 ms, c=1, table
    /// beside the seed's figures, plots (host if it has sch_plug, else VM).
    Demo(xtask::bench::DemoArgs),
    /// The same for each concurrency and strategy, in one table.
    Bench(xtask::bench::BenchArgs),
    /// The long run: every strategy under reloading and a mixed load, the
    /// reloader's RSS, fds and children sampled; fails on any leak or loss.
    Soak(xtask::soak::SoakArgs),
    /// The core guest scenarios on each of several Debian kernels, a table.
    Matrix(xtask::matrix::MatrixArgs),
    /// Run the host tests (all but the guest tests) N times; print each
    /// failing test with its count.
    Flaky(xtask::flaky::FlakyArgs),
    /// The Debian package (binaries, man pages, completions, docs) with
    /// cargo-deb; prints its path.
    Dist,
    /// Median plug+release cost in-process vs spawning tc, host and VM
    /// (ARGS go to plug-bench: --iterations N --spawns N).
    BenchPlug {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Vm(a) => xtask::vm::main(a).map(|code| ExitCode::from(code.clamp(0, 255) as u8)),
        Task::SetupQdiscs { args } => xtask::tasks::setup_qdiscs(&args).map(|()| ExitCode::SUCCESS),
        Task::Demo(a) => xtask::bench::demo(a).map(|()| ExitCode::SUCCESS),
        Task::Bench(a) => xtask::bench::bench(a).map(|()| ExitCode::SUCCESS),
        Task::Soak(a) => xtask::soak::soak(a).map(|()| ExitCode::SUCCESS),
        Task::Matrix(a) => xtask::matrix::matrix(a).map(|()| ExitCode::SUCCESS),
        Task::Flaky(a) => xtask::flaky::flaky(a),
        Task::Dist => xtask::dist::dist().map(|_| ExitCode::SUCCESS),
        Task::BenchPlug { args } => xtask::tasks::bench_plug(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}
