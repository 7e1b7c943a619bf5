//! The `ttft` binary: a thin shell around [`ttft::app::run`].

fn main() {
    let code = match ttft::app::run() {
        Ok(code) => code,
        Err(e) => {
            // One line: the message, then each cause not already spelled out in it (a thiserror
            // message that embeds its source would otherwise print it twice, as `{e:#}` does).
            let line = ttft::backend::api::error_chain(e.as_ref());
            eprintln!("ttft: error: {line}");
            2
        }
    };
    std::process::exit(code);
}
