//! `cutover-bench`: see [`cutover_bench::cli`] and `cutover-bench --help`.

fn main() -> std::process::ExitCode {
    cutover_bench::cli::main()
}
