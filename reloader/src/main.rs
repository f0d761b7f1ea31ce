//! `reloader`: the supervisor (issue #5; not built yet).

fn main() {
    eprintln!("reloader: not built yet (see issue #5)");
    std::process::exit(2);
}
