//! The `ttft` binary: a thin shell around [`ttft::cli::run`].

fn main() {
    let code = match ttft::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ttft: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
