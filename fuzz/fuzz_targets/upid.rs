//! UPID parsing (task ids Proxmox returns, whose node name drowsy puts into
//! the task-status URL): no panic; an accepted id prints back exactly as it
//! came, and its node is a plain host label.
#![no_main]

use drowsy::proxmox::Upid;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(upid) = text.parse::<Upid>() else {
        return;
    };
    assert_eq!(upid.to_string(), text);
    assert!(!upid.node.is_empty());
    assert!(upid
        .node
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    for field in [&upid.task_type, &upid.id, &upid.user] {
        assert!(!field.contains(':') && !field.chars().any(char::is_whitespace));
    }
    assert_eq!(upid.to_string().parse::<Upid>().as_ref(), Ok(&upid));
});
