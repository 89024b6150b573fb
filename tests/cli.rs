//! The command line: flags, config checking, start-up errors and signals.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn version_exits_0() {
    for flag in ["--version", "-V"] {
        let r = run(&[os(flag)]);
        assert_eq!(r.code, Some(0), "{flag}: {}", r.stderr);
        assert_eq!(
            r.stdout,
            format!("gatemq {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[test]
fn help_exits_0() {
    for flag in ["--help", "-h"] {
        let r = run(&[os(flag)]);
        assert_eq!(r.code, Some(0), "{flag}: {}", r.stderr);
        assert!(r.stdout.contains("Usage: gatemq"), "{flag}: {}", r.stdout);
        for opt in ["-c", "-p", "-v", "--test-config"] {
            assert!(r.stdout.contains(opt), "{flag} does not mention {opt}");
        }
    }
}

#[test]
fn unknown_argument_fails() {
    let r = run(&[os("--bogus")]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("--bogus"), "{}", r.stderr);
    let r = run(&[os("-p"), os("notaport")]);
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("notaport"), "{}", r.stderr);
}

#[test]
fn test_config_good() {
    let conf = write_temp(
        "good.conf",
        "# a comment\n\
         listener 0 127.0.0.1\n\
         allow_anonymous true\n\
         max_connections -1\n\
         max_inflight_messages 10\n\
         max_queued_messages 100\n\
         max_queued_bytes 0\n\
         queue_qos0_messages false\n\
         message_size_limit 0\n\
         max_packet_size 1000\n\
         max_keepalive 300\n\
         retain_available true\n\
         sys_interval 10\n\
         set_tcp_nodelay true\n\
         log_type error\n\
         log_type information\n\
         log_dest stderr\n",
    );
    let r = run(&[os("--test-config"), os("-c"), path_os(&conf)]);
    let _ = std::fs::remove_file(&conf);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(!r.stderr.contains("listening"), "it started: {}", r.stderr);
}

#[test]
fn test_config_bad_names_file_line_and_option() {
    let cases = [
        (
            "max_keepalive lots",
            "option 'max_keepalive': invalid value 'lots' (expected a whole number from 0 to 65535)",
        ),
        ("foo bar", "unknown option 'foo'"),
        ("allow_anonymous yes", "option 'allow_anonymous'"),
        ("listener 70000", "option 'listener'"),
        ("max_inflight_messages -3", "option 'max_inflight_messages'"),
        ("log_dest file /tmp/x", "option 'log_dest'"),
    ];
    for (line, msg) in cases {
        let conf = write_temp(
            "bad.conf",
            &format!("# first line\nlistener 0 127.0.0.1\n\n{line}\nsys_interval 0\n"),
        );
        let r = run(&[os("--test-config"), os("-c"), path_os(&conf)]);
        let _ = std::fs::remove_file(&conf);
        assert_eq!(r.code, Some(1), "{line}: stderr {}", r.stderr);
        let want = format!("gatemq: {}:4: {msg}", conf.display());
        assert!(
            r.stderr.contains(&want),
            "{line}: stderr should contain {want:?}, it is {:?}",
            r.stderr
        );
    }
}

/// A free port on 127.0.0.1 (bound and let go), for listeners that must share one port.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn listeners_that_cannot_both_bind_name_both_lines() {
    let port = free_port();
    // Each pair is refused by Linux's bind(2) (0.0.0.0 covers 127.0.0.1, `::` covers all).
    let cases = [
        (
            format!("listener {port}"),
            format!("listener {port}"),
            "port {port} on all IPv4 interfaces",
            "port {port} on all IPv4 interfaces",
        ),
        (
            format!("listener {port}"),
            format!("listener {port} 127.0.0.1"),
            "127.0.0.1:{port}",
            "port {port} on all IPv4 interfaces",
        ),
        (
            format!("listener {port} 127.0.0.1"),
            format!("listener {port}"),
            "port {port} on all IPv4 interfaces",
            "127.0.0.1:{port}",
        ),
        (
            format!("listener {port} ::"),
            format!("listener {port} 127.0.0.1"),
            "127.0.0.1:{port}",
            "port {port} on all interfaces",
        ),
        (
            format!("port {port}"),
            format!("listener {port} localhost"),
            "127.0.0.1:{port}",
            "port {port} on all IPv4 interfaces",
        ),
    ];
    for (first, second, this, other) in cases {
        let (this, other) = (
            this.replace("{port}", &port.to_string()),
            other.replace("{port}", &port.to_string()),
        );
        let conf = write_temp(
            "collide.conf",
            &format!("# two listeners\n{first}\nallow_anonymous true\n{second}\n"),
        );
        let f = conf.display();
        let want = format!(
            "gatemq: {f}:4: this listener ({this}) collides with the listener on {f}:2 ({other}): the system cannot bind both\n"
        );
        let checked = run(&[os("--test-config"), os("-c"), path_os(&conf)]);
        let started = run(&[os("-c"), path_os(&conf)]);
        let _ = std::fs::remove_file(&conf);
        for (what, r) in [("--test-config", checked), ("start", started)] {
            assert_eq!(r.code, Some(1), "{what} {first} + {second}: {}", r.stderr);
            assert_eq!(r.stderr, want, "{what} {first} + {second}");
        }
    }
}

#[test]
fn listeners_on_one_port_with_different_addresses_both_listen() {
    let port = free_port();
    let conf = write_temp(
        "share.conf",
        &format!("listener {port} 127.0.0.1\nlistener {port} 127.0.0.2\nallow_anonymous true\n"),
    );
    let r = run(&[os("--test-config"), os("-c"), path_os(&conf)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let b = Broker::spawn(&[os("-c"), path_os(&conf)], Some(port));
    let _ = std::fs::remove_file(&conf);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.log().contains(&format!("listening on 127.0.0.2:{port}")) {
        assert!(std::time::Instant::now() < deadline, "{}", b.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    b.client("share-1").ping();
    let s = std::net::TcpStream::connect(("127.0.0.2", port)).expect("connect to 127.0.0.2");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = Raw { s };
    c.connect_ok("share-2", true);
    c.ping();
}

#[test]
fn start_with_unknown_option_fails() {
    let conf = write_temp("unknown.conf", "listener 0 127.0.0.1\nfoo bar\n");
    let r = run(&[os("-c"), path_os(&conf)]);
    let _ = std::fs::remove_file(&conf);
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "gatemq: {}:2: unknown option 'foo'",
            conf.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("listening"), "it started: {}", r.stderr);
}

#[test]
fn missing_config_file_fails() {
    let missing = temp_path("does-not-exist.conf");
    let r = run(&[os("-c"), path_os(&missing)]);
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "cannot read config file {}: no such file or directory",
            missing.display()
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn port_in_use_fails_with_one_clear_sentence() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // Alone, and after a listener that opens fine: either way the sentence is all of stderr.
    for listeners in [
        format!("listener {port} 127.0.0.1\n"),
        format!("listener 0 127.0.0.1\nlistener {port} 127.0.0.1\n"),
    ] {
        let conf = write_temp("inuse.conf", &format!("{listeners}allow_anonymous true\n"));
        let r = run(&[os("-c"), path_os(&conf)]);
        let _ = std::fs::remove_file(&conf);
        assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
        assert_eq!(
            r.stderr,
            format!("gatemq: cannot listen on 127.0.0.1:{port}: address already in use\n"),
            "{listeners}"
        );
    }
    drop(taken);
}

#[test]
fn a_start_logs_its_listeners_then_running() {
    let b = Broker::start("");
    let running = format!("gatemq {} running", env!("CARGO_PKG_VERSION"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.log().contains(&running) {
        assert!(std::time::Instant::now() < deadline, "{}", b.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = b.log();
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in {log}"))
    };
    assert!(
        at(&format!("listening on 127.0.0.1:{}", b.port)) < at(&running),
        "{log}"
    );
}

#[test]
fn sigterm_exits_0_promptly() {
    let mut b = Broker::start("");
    let mut c = b.client("term-watch");
    c.ping();
    b.signal("TERM");
    let st = b.wait_exit(Duration::from_secs(3));
    assert!(
        st.is_some(),
        "still running 3 s after SIGTERM:\n{}",
        b.log()
    );
    assert_eq!(st.unwrap().code(), Some(0), "{}", b.log());
    c.expect_closed();
}

#[test]
fn sigint_exits_0_promptly() {
    let mut b = Broker::start("");
    b.signal("INT");
    let st = b.wait_exit(Duration::from_secs(3));
    assert!(st.is_some(), "still running 3 s after SIGINT:\n{}", b.log());
    assert_eq!(st.unwrap().code(), Some(0), "{}", b.log());
}

#[test]
fn sighup_does_not_stop_the_broker() {
    let mut b = Broker::start("");
    let mut c = b.client("hup-watch");
    b.signal("HUP");
    std::thread::sleep(Duration::from_millis(200));
    b.assert_running();
    c.ping();
    b.client("hup-new").ping();
}

#[test]
fn port_flag_without_config() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b = Broker::spawn(&[os("-p"), os(&port.to_string())], Some(port));
    assert_eq!(b.port, port);
    let mut c = b.client("port-flag");
    c.subscribe(1, &[("p/t", 0)], &[0]);
    c.send(&publish("p/t", b"x", 0, false, false, 0));
    assert_eq!(c.read_publish().payload, b"x");
}

#[test]
fn verbose_flag_logs_debug() {
    let conf = write_temp(
        "verbose.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nlog_type error\n",
    );
    let b = Broker::spawn(&[os("-c"), path_os(&conf), os("-v")], None);
    let mut c = b.client("verbose-client");
    c.ping();
    c.send(&disconnect());
    c.expect_closed();
    let _ = std::fs::remove_file(&conf);
    // -v logs everything although log_type says error only.
    assert!(b.log().contains("verbose-client"), "{}", b.log());
}
