fn main() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        eprintln!("error: internal harness error (a bug): {msg}");
        std::process::exit(hypervisor_harness::error::EXIT_SOFTWARE);
    }));
    std::process::exit(hypervisor_harness::cli::main(std::env::args_os()));
}
