//! The systemd notify protocol against the real binary: the test binds a Unix datagram socket,
//! passes it as NOTIFY_SOCKET, and reads what gatemq says: READY=1 once it listens, WATCHDOG=1
//! when asked for, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn recv_until(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg == want;
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; got {seen:?}");
}

#[test]
fn ready_watchdog_reload_status_and_stopping() {
    let dir = std::env::temp_dir().join(format!("gatemq-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let conf = dir.join("gatemq.conf");
    std::fs::write(&conf, "listener 0 127.0.0.1\nsys_interval 0\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatemq"))
        .arg("-c")
        .arg(&conf)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let result = std::panic::catch_unwind(|| {
        let first = recv_until(&sock, "READY=1", Duration::from_secs(10));
        assert_eq!(first, vec!["READY=1"], "READY=1 comes first");
        let status = recv_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
        assert!(
            status.iter().any(|s| s.starts_with("STATUS=0 clients")),
            "{status:?}"
        );
        // Half the watchdog interval: several pets in a second.
        let start = Instant::now();
        recv_until(&sock, "WATCHDOG=1", Duration::from_secs(1));
        recv_until(&sock, "WATCHDOG=1", Duration::from_secs(1));
        assert!(start.elapsed() < Duration::from_millis(900));
        Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        let reload = recv_until(&sock, "RELOADING=1", Duration::from_secs(2));
        assert!(reload.last().is_some_and(|s| s == "RELOADING=1"));
        recv_until(&sock, "READY=1", Duration::from_secs(2));
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        recv_until(&sock, "STOPPING=1", Duration::from_secs(2));
    });
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(status.success(), "exit status {status}");
}

#[test]
fn no_notify_socket_means_no_notifications_and_normal_start() {
    let dir = std::env::temp_dir().join(format!("gatemq-sd0-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("gatemq.conf");
    std::fs::write(&conf, "listener 0 127.0.0.1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatemq"))
        .arg("--test-config")
        .arg("-c")
        .arg(&conf)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success());
}
