//! `hypervisor-harness monitor PATH COMMAND`: one command to a monitor socket (ours, or
//! QEMU's), its reply on stdout. For scripts and tests.

use super::hmp::PROMPT;
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The most reply text read before giving up on a prompt.
const MAX_REPLY: usize = 16 << 20;

fn connect(path: &Path) -> Result<UnixStream, String> {
    let s = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Read until the text ends in a prompt (ours or QEMU's) or the monitor closes; the text before
/// the prompt.
fn read_to_prompt(s: &mut UnixStream) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        for prompt in [PROMPT, "(qemu) "] {
            if let Some(t) = text.strip_suffix(prompt) {
                return Ok(t.to_string());
            }
        }
        if got.len() > MAX_REPLY {
            return Err("the monitor's reply has no end".into());
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok(text.into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the monitor: {e}")),
        }
    }
}

/// Send one human-monitor command; its reply (without the prompt).
pub fn hmp_command(path: &Path, command: &str) -> Result<String, String> {
    if command.contains('\n') {
        return Err("a command is one line".into());
    }
    let mut s = connect(path)?;
    read_to_prompt(&mut s)?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("writing the monitor: {e}"))?;
    let reply = read_to_prompt(&mut s)?;
    // QEMU's monitor echoes the command as its line editor redraws it (escape sequences and
    // all), up to the first newline; ours sends no escapes.
    Ok(match reply.split_once('\n') {
        Some((echo, rest)) if echo.contains('\x1b') => rest.to_string(),
        _ => reply,
    })
}

/// Negotiate capabilities and send one QMP command (JSON text); its reply object (events
/// skipped).
pub fn qmp_command(path: &Path, command: &str) -> Result<Value, String> {
    let cmd: Value =
        serde_json::from_str(command).map_err(|e| format!("the command is not JSON: {e}"))?;
    let s = connect(path)?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut next = || -> Result<Value, String> {
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) => return Err("the monitor closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the monitor: {e}")),
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| format!("the monitor sent bad JSON: {e}"))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    };
    let greeting = next()?;
    if greeting.get("QMP").is_none() {
        return Err(format!("not a QMP greeting: {greeting}"));
    }
    let mut send = |v: &Value| {
        w.write_all(format!("{v}\n").as_bytes())
            .map_err(|e| format!("writing the monitor: {e}"))
    };
    send(&serde_json::json!({"execute": "qmp_capabilities"}))?;
    let caps = next()?;
    if caps.get("return").is_none() {
        return Err(format!("capabilities negotiation refused: {caps}"));
    }
    send(&cmd)?;
    next()
}
