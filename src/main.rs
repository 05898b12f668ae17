//! The `plexus` command line. Only glue: every command lives in `plexus::cli`.

fn main() -> std::process::ExitCode {
    plexus::cli::main()
}
