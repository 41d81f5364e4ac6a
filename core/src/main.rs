//! The `streamflow` binary: the CLI and the server. The work happens in the library.

fn main() -> std::process::ExitCode {
    streamflow::cli::main()
}
