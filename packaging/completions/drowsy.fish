# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_drowsy_global_optspecs
    string join \n log-format= log-level= c/config= h/help V/version
end

function __fish_drowsy_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_drowsy_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_drowsy_using_subcommand
    set -l cmd (__fish_drowsy_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c drowsy -n "__fish_drowsy_needs_command" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_needs_command" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_needs_command" -s c -l config -d 'The configuration file' -r -F
complete -c drowsy -n "__fish_drowsy_needs_command" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_needs_command" -s V -l version -d 'Print version'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "run" -d 'Run the proxy (the default command)'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "check" -d 'Validate the configuration, print a summary, and exit'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "sim" -d 'Run the simulated Proxmox VE API alone (for trying drowsy without a cluster)'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "demo" -d 'A simulated cluster with drowsy in front of it: nothing to set up'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "status" -d 'Print a table of the routes of a running drowsy'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "health" -d 'Exit 0 when a running drowsy answers /healthz (for container health checks)'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "certs" -d 'Print the certificates of a running drowsy: names, issuer, expiry, next renewal, last error'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "wake" -d 'Wake a route\'s guest through the admin API and wait until it answers'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "sleep" -d 'Put a route\'s guest to sleep now (refused while it is in use)'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "stats" -d 'Like `docker stats`: CPU, memory, network and disk I/O of every guest, refreshed each poll'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "logs" -d 'The journal of a route\'s guest (LXC through the node\'s terminal, QEMU through its guest agent)'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "manpage" -d 'Print the man page (roff), or write every page into a directory'
complete -c drowsy -n "__fish_drowsy_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c drowsy -n "__fish_drowsy_using_subcommand run" -s c -l config -d 'The configuration file' -r -F
complete -c drowsy -n "__fish_drowsy_using_subcommand run" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand run" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand run" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand check" -s c -l config -d 'The configuration file' -r -F
complete -c drowsy -n "__fish_drowsy_using_subcommand check" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand check" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand check" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand sim" -l listen -d 'Address of the simulated API' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand sim" -l guests -d 'YAML file describing the nodes and guests (a small default set without it)' -r -F
complete -c drowsy -n "__fish_drowsy_using_subcommand sim" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand sim" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand sim" -l plain-http -d 'Serve plain HTTP instead of HTTPS'
complete -c drowsy -n "__fish_drowsy_using_subcommand sim" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand demo" -l listen -d 'Address of the demo proxy' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand demo" -l admin -d 'Address of the demo\'s admin endpoints' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand demo" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand demo" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand demo" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand status" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand status" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand status" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand status" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand health" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand health" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand health" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand health" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand certs" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand certs" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand certs" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand certs" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand wake" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand wake" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand wake" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand wake" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand sleep" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand sleep" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand sleep" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand sleep" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand stats" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand stats" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand stats" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand stats" -l no-stream -d 'Print one table and exit'
complete -c drowsy -n "__fish_drowsy_using_subcommand stats" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -s n -l lines -d 'Only the last N lines' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -s u -l unit -d 'Only this systemd unit' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -l admin -d 'Base URL of drowsy\'s admin listener' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -s f -l follow -d 'Keep printing new lines'
complete -c drowsy -n "__fish_drowsy_using_subcommand logs" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand completions" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand completions" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand completions" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand manpage" -l dir -d 'Write drowsy.1 and one page per subcommand (drowsy-run.1, ...) into this directory instead of printing drowsy.1' -r -F
complete -c drowsy -n "__fish_drowsy_using_subcommand manpage" -l log-format -d 'Log output format' -r -f -a "text\t''
json\t''"
complete -c drowsy -n "__fish_drowsy_using_subcommand manpage" -l log-level -d 'Log level or filter (e.g. debug, or info,drowsy=debug); overrides RUST_LOG' -r
complete -c drowsy -n "__fish_drowsy_using_subcommand manpage" -s h -l help -d 'Print help'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "run" -d 'Run the proxy (the default command)'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "check" -d 'Validate the configuration, print a summary, and exit'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "sim" -d 'Run the simulated Proxmox VE API alone (for trying drowsy without a cluster)'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "demo" -d 'A simulated cluster with drowsy in front of it: nothing to set up'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "status" -d 'Print a table of the routes of a running drowsy'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "health" -d 'Exit 0 when a running drowsy answers /healthz (for container health checks)'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "certs" -d 'Print the certificates of a running drowsy: names, issuer, expiry, next renewal, last error'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "wake" -d 'Wake a route\'s guest through the admin API and wait until it answers'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "sleep" -d 'Put a route\'s guest to sleep now (refused while it is in use)'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "stats" -d 'Like `docker stats`: CPU, memory, network and disk I/O of every guest, refreshed each poll'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "logs" -d 'The journal of a route\'s guest (LXC through the node\'s terminal, QEMU through its guest agent)'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "manpage" -d 'Print the man page (roff), or write every page into a directory'
complete -c drowsy -n "__fish_drowsy_using_subcommand help; and not __fish_seen_subcommand_from run check sim demo status health certs wake sleep stats logs completions manpage help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
