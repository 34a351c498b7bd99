fn main() -> std::process::ExitCode {
    drowsy::cli::main()
}
