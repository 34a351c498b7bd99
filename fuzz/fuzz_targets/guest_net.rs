//! Guest addresses from LXC netN / QEMU ipconfigN values and from the
//! interface lists of the API and the guest agent (all written by whoever
//! controls the guest): no panic, and only usable addresses come out.
#![no_main]

use drowsy::proxmox::net;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fn check(ips: &[IpAddr]) {
    for ip in ips {
        assert!(net::usable(ip), "{ip}");
        assert!(!ip.is_unspecified() && !ip.is_multicast(), "{ip}");
        if let IpAddr::V6(v6) = ip {
            assert!(v6.to_ipv4_mapped().is_none(), "mapped {ip} not canonical");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(&net::lxc_net_ips(text));
    check(&net::qemu_ipconfig_ips(text));
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(text) {
        check(&net::lxc_config_ips(&json));
        check(&net::qemu_config_ips(&json));
        check(&net::lxc_interface_ips(&json));
        check(&net::agent_interface_ips(&json));
    }
});
