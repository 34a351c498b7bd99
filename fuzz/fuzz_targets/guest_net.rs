//! Guest addresses from LXC netN / QEMU ipconfigN values and from the
//! interface lists of the API and the guest agent (all written by whoever
//! controls the guest): no panic, every address comes out canonical, and
//! sorting them out keeps each one, as usable or with its reason.
#![no_main]

use drowsy::proxmox::net;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fn check(ips: Vec<IpAddr>) {
    for ip in &ips {
        if let IpAddr::V6(v6) = ip {
            assert!(v6.to_ipv4_mapped().is_none(), "mapped {ip} not canonical");
        }
    }
    for loopback in [false, true] {
        let sorted = net::sort_out(ips.clone(), loopback);
        assert_eq!(sorted.usable.len() + sorted.ignored.len(), ips.len());
        for ip in &sorted.usable {
            assert!(net::refusal(ip, loopback).is_none(), "{ip}");
            assert!(!ip.is_unspecified() && !ip.is_multicast(), "{ip}");
        }
        for i in &sorted.ignored {
            assert_eq!(net::refusal(&i.ip, loopback), Some(i.why), "{}", i.ip);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(net::lxc_net_ips(text));
    check(net::qemu_ipconfig_ips(text));
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(text) {
        check(net::lxc_config_ips(&json));
        check(net::qemu_config_ips(&json));
        check(net::lxc_interface_ips(&json));
        check(net::agent_interface_ips(&json));
    }
});
