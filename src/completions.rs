//! Shell completions and man pages, generated from the clap definitions
//! (`drowsy completions SHELL`, `drowsy manpage`), so they never drift from
//! the command line itself. The Debian package ships copies of both made by
//! these commands (`packaging/completions/`, `packaging/man/`); a test checks
//! that the copies are current.

use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The shells `drowsy completions` writes scripts for.
pub use clap_complete::Shell;

#[derive(clap::Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ManpageArgs {
    /// Write drowsy.1 and one page per subcommand (drowsy-run.1, ...) into
    /// this directory instead of printing drowsy.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The completion script for `shell`, as bytes.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "drowsy", &mut out);
    out
}

/// Every man page: (file name, roff text). The first is drowsy.1; then one
/// page per subcommand, named as git names its pages (drowsy-run.1).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    // Building names the subcommands for their pages: drowsy-run, ...
    cmd.build();
    let subs = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned();
    let mut pages = std::iter::once(cmd.clone())
        .chain(subs)
        .map(|c| {
            let man = clap_mangen::Man::new(c);
            let mut out = Vec::new();
            man.render(&mut out)?;
            Ok((man.get_filename(), out))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    if let Some((_, main)) = pages.first_mut() {
        main.extend_from_slice(MAIN_PAGE_TAIL.as_bytes());
    }
    Ok(pages)
}

/// What clap does not know: where the files are (as the Debian package
/// lays them out) and the environment.
const MAIN_PAGE_TAIL: &str = r#".SH FILES
.TP
\fI/etc/drowsy/drowsy.yml\fR
The configuration (\fB\-\-config\fR, \fBDROWSY_CONFIG\fR). Check it with \fBdrowsy check \-\-config /etc/drowsy/drowsy.yml\fR.
.TP
\fI/etc/drowsy/drowsy.env\fR
Secrets for the systemd unit, used in the configuration as ${PVE_TOKEN_SECRET}.
.TP
\fI/var/lib/drowsy\fR
State: the ACME account and certificates (acme.storage).
.SH ENVIRONMENT
.TP
\fBDROWSY_CONFIG\fR
The configuration file when \fB\-\-config\fR is not given.
.TP
\fBDROWSY_ADMIN\fR
The admin URL for status, wake, sleep, stats, logs, certs and health.
.TP
\fBDROWSY_ADMIN_TOKEN\fR
The admin API's bearer token (listen.admin_token) for those commands.
.TP
\fBRUST_LOG\fR
The log filter when \fB\-\-log\-level\fR is not given.
.SH SEE ALSO
\fBsystemctl\fR(1), /usr/share/doc/drowsy/README.md
"#;

pub fn completions(args: &CompletionsArgs) -> ExitCode {
    print_bytes(&completion_script(args.shell))
}

pub fn manpage(args: &ManpageArgs) -> ExitCode {
    let pages = match man_pages() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("drowsy: man page: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &args.dir {
        None => match pages.first() {
            Some((_, text)) => print_bytes(text),
            None => ExitCode::FAILURE,
        },
        Some(dir) => match write_pages(dir, &pages) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("drowsy: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in pages {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

fn print_bytes(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`drowsy manpage | head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drowsy: {e}");
            ExitCode::FAILURE
        }
    }
}
