//! The appliance's side of PID 1's update requests over /run/flowwarden/init.sock:
//! `update stage FILE` (progress lines, then the ending), `update acknowledge`,
//! `system reboot`. Used by `flowwarden update` and the page's upload alike.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How an update ended, as the last line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Staged { version: String, slot: String },
    Refused(String),
    Failed(String),
}

impl Ending {
    /// PID 1's last answer line: `staged V SLOT`, `refused R`, `failed R` (anything else is a failure).
    pub fn from_answer(line: &str) -> Ending {
        let line = line.trim_end();
        if let Some((v, s)) = line.strip_prefix("staged ").and_then(|rest| rest.rsplit_once(' ')) {
            return Ending::Staged {
                version: v.to_string(),
                slot: s.to_string(),
            };
        }
        if let Some(r) = line.strip_prefix("refused ") {
            return Ending::Refused(r.to_string());
        }
        Ending::Failed(
            line.strip_prefix("failed ")
                .or(line.strip_prefix("error "))
                .unwrap_or(line)
                .to_string(),
        )
    }

    pub fn line(&self) -> String {
        match self {
            Ending::Staged { version, slot } => format!("flowwarden: update {version} staged in slot {slot}"),
            Ending::Refused(r) => format!("flowwarden: update refused: {r}"),
            Ending::Failed(r) => format!("flowwarden: update failed: {r}"),
        }
    }

    pub fn code(&self) -> u8 {
        match self {
            Ending::Staged { .. } => 0,
            Ending::Refused(_) => 1,
            Ending::Failed(_) => 2,
        }
    }
}

/// Hands a bundle file to PID 1; `on_progress` gets each step. The ending names
/// what happened even when PID 1 is not there.
pub fn stage(file: &Path, on_progress: &mut dyn FnMut(&str)) -> Ending {
    if !crate::management::under_init() {
        return Ending::Failed(format!(
            "no PID 1 here to install it ({} is missing): updates are installed on the appliance's image",
            crate::management::INIT_SOCKET
        ));
    }
    Ending::from_answer(&ask_lines(&format!("update stage {}", file.display()), on_progress))
}

/// Sends one request line to PID 1; `progress …` lines go to `on_progress`, the last line is returned.
pub fn ask_lines(request: &str, on_progress: &mut dyn FnMut(&str)) -> String {
    use std::io::BufRead;
    let path = crate::management::INIT_SOCKET;
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => return format!("failed {path}: {e}"),
    };
    // Installing reads the bundle twice and writes the slot: minutes on a slow board.
    let _ = s.set_read_timeout(Some(Duration::from_secs(900)));
    if let Err(e) = writeln!(s, "{request}") {
        return format!("failed {path}: {e}");
    }
    let r = std::io::BufReader::new(s);
    let mut last = String::from("failed PID 1 closed the request without an answer");
    for line in r.lines() {
        match line {
            Ok(l) => match l.strip_prefix("progress ") {
                Some(p) => on_progress(p),
                None => {
                    last = l;
                    break;
                }
            },
            Err(e) => {
                last = format!("failed reading PID 1's answer: {e}");
                break;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_the_contract_lines_and_exit_codes() {
        let e = Ending::from_answer("staged 0.2.0+g1234 b\n");
        assert_eq!(e.line(), "flowwarden: update 0.2.0+g1234 staged in slot b");
        assert_eq!(e.code(), 0);
        let e = Ending::from_answer("refused signature: not signed by any of the 1 update key(s)");
        assert_eq!(
            e.line(),
            "flowwarden: update refused: signature: not signed by any of the 1 update key(s)"
        );
        assert_eq!(e.code(), 1);
        let e = Ending::from_answer("failed cannot open the slot /dev/vda3: Permission denied");
        assert_eq!(e.code(), 2);
        assert_eq!(Ending::from_answer("error no request line within 5 s").code(), 2);
    }
}
