//! The `xsell` binary as a user runs it: exit codes and messages.

use std::process::{Command, Stdio};

fn xsell() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xsell"))
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = xsell().args(["serve", "--print-config"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // the reader goes away, as `| head` does
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn bad_settings_are_one_line_errors_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("hp.json");
    std::fs::write(&hp, r#"{"bogus_key": 1}"#).unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").unwrap();
    for (args, want) in [
        (vec!["train", "--config", hp.to_str().unwrap()], "bogus_key"),
        (vec!["train", "--models", blocker.to_str().unwrap()], "cannot be written"),
        (vec!["train", "--column", "customer_id=order_id"], "customer_id"),
        (vec!["serve", "--max-in-flight", "0"], "max_in_flight"),
    ] {
        let out = xsell().args(&args).current_dir(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(want), "{args:?}: {stderr}");
    }
}
