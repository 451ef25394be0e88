//! The serial-console maintenance commands PID 1 accepts from a field
//! technician (and from the QEMU system tests): `query ...`, `exporters ...`, `alerts ...`,
//! `status`, `user ...`, `token ...`, `update ...`, `network keep`, `watchdog-test`, `factory-reset`, `reboot`, `poweroff`, `help`. Query and
//! account commands run the appliance binary as a child with `--data-dir`
//! filled in (account changes reach a running appliance over its control
//! socket, so `user set` here is the password recovery that keeps all data); each command ends with a
//! `flowwarden-console: done (exit N)` line so a script knows where output ends.

use thiserror::Error;

/// Why a console line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConsoleError {
    #[error("line ends with a backslash")]
    TrailingBackslash,
    #[error("unterminated {0} quote")]
    UnterminatedQuote(char),
    #[error("--data-dir is fixed on the appliance")]
    DataDirFixed,
    #[error("unknown command {0:?}; {HELP}")]
    Unknown(String),
}

/// A parsed console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleCmd {
    /// Run the binary with these arguments (already including the subcommand and --data-dir).
    Exec(Vec<String>),
    /// Like `Exec`, but the console first reads a password (twice, not echoed)
    /// and hands it to the child on its stdin.
    ExecWithPassword(Vec<String>),
    Status,
    /// `network keep`: the management network settings on trial stay.
    NetworkKeep,
    Reboot,
    PowerOff,
    /// `factory-reset [--yes]`: wipe configuration, users and data (the slots stay).
    /// Without --yes the console first asks for the word `reset`.
    FactoryReset {
        confirmed: bool,
    },
    Help,
    Empty,
}

pub const HELP: &str = "commands: query [--filter EXPR] [--format table|jsonl|csv] [--top KEY] ... | exporters [--format json] | alerts [--format table|jsonl] | status | user set NAME --role admin|viewer | user list | user remove NAME | token create NAME --role viewer|metrics | token list | token remove NAME | reload | update URL|FILE [--no-reboot] | update --acknowledge-rollback | network keep | watchdog-test [STAGE] [--yes] | factory-reset [--yes] | reboot | poweroff | help";

/// Splits a line like a shell would for words, 'single' and "double" quotes and backslash escapes.
pub fn split_words(line: &str) -> Result<Vec<String>, ConsoleError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err(ConsoleError::TrailingBackslash),
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
        if quote.is_some() {
            in_word = true;
        }
    }
    if let Some(q) = quote {
        return Err(ConsoleError::UnterminatedQuote(q));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Parses one console line; `data_dir` is added to commands that read the store.
pub fn parse(line: &str, data_dir: &str) -> Result<ConsoleCmd, ConsoleError> {
    let words = split_words(line)?;
    let Some(first) = words.first() else {
        return Ok(ConsoleCmd::Empty);
    };
    // Accept "flowwarden query ..." as well as "query ...".
    let (cmd, rest) = if first == "flowwarden" && words.len() > 1 {
        (words[1].as_str(), &words[2..])
    } else {
        (first.as_str(), &words[1..])
    };
    match cmd {
        // `update URL|FILE [--no-reboot]`, `update --acknowledge-rollback`;
        // `watchdog-test [STAGE] [--yes]`: hang a stage and watch the watchdog reset the box.
        "query" | "exporters" | "alerts" | "update" | "watchdog-test" => {
            if rest.iter().any(|w| w == "--data-dir" || w.starts_with("--data-dir=")) {
                return Err(ConsoleError::DataDirFixed);
            }
            let mut args = vec![cmd.to_string(), "--data-dir".into(), data_dir.to_string()];
            args.extend(rest.iter().cloned());
            Ok(ConsoleCmd::Exec(args))
        }
        "user" | "token" => {
            if rest.iter().any(|w| w == "--data-dir" || w.starts_with("--data-dir=")) {
                return Err(ConsoleError::DataDirFixed);
            }
            let mut args = vec![cmd.to_string()];
            let Some(action) = rest.first() else {
                args.push("--help".into());
                return Ok(ConsoleCmd::Exec(args));
            };
            args.extend([action.clone(), "--data-dir".into(), data_dir.to_string()]);
            args.extend(rest[1..].iter().cloned());
            let asks = cmd == "user" && action == "set" && !rest.iter().any(|w| w == "--help" || w == "-h");
            Ok(if asks {
                ConsoleCmd::ExecWithPassword(args)
            } else {
                ConsoleCmd::Exec(args)
            })
        }
        "version" => Ok(ConsoleCmd::Exec(vec!["version".into()])),
        "reload" => Ok(ConsoleCmd::Exec(vec!["reload".into(), "--data-dir".into(), data_dir.to_string()])),
        "status" => Ok(ConsoleCmd::Status),
        "network" if rest.len() == 1 && rest[0] == "keep" => Ok(ConsoleCmd::NetworkKeep),
        "reboot" => Ok(ConsoleCmd::Reboot),
        "factory-reset" => match rest {
            [] => Ok(ConsoleCmd::FactoryReset { confirmed: false }),
            [y] if y == "--yes" => Ok(ConsoleCmd::FactoryReset { confirmed: true }),
            _ => Err(ConsoleError::Unknown(format!("factory-reset {}", rest.join(" ")))),
        },
        "poweroff" | "shutdown" => Ok(ConsoleCmd::PowerOff),
        "help" | "?" => Ok(ConsoleCmd::Help),
        other => Err(ConsoleError::Unknown(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_quotes() {
        assert_eq!(
            split_words(r#"query --filter "dst port 443 and proto tcp" --format jsonl"#).unwrap(),
            vec!["query", "--filter", "dst port 443 and proto tcp", "--format", "jsonl"]
        );
        assert_eq!(split_words(r#"a 'b c' d\ e """#).unwrap(), vec!["a", "b c", "d e", ""]);
        assert!(split_words("query 'oops").is_err());
        assert_eq!(split_words("   ").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse("query --format jsonl", "/data").unwrap(),
            ConsoleCmd::Exec(vec![
                "query".into(),
                "--data-dir".into(),
                "/data".into(),
                "--format".into(),
                "jsonl".into()
            ])
        );
        assert_eq!(
            parse("flowwarden exporters", "/data").unwrap(),
            ConsoleCmd::Exec(vec!["exporters".into(), "--data-dir".into(), "/data".into()])
        );
        assert_eq!(parse("reboot", "/d").unwrap(), ConsoleCmd::Reboot);
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse("user set tech --role admin", "/d").unwrap(),
            ConsoleCmd::ExecWithPassword(v(&["user", "set", "--data-dir", "/d", "tech", "--role", "admin"]))
        );
        assert_eq!(
            parse("flowwarden token create prom --role metrics", "/d").unwrap(),
            ConsoleCmd::Exec(v(&["token", "create", "--data-dir", "/d", "prom", "--role", "metrics"]))
        );
        assert_eq!(parse("user", "/d").unwrap(), ConsoleCmd::Exec(v(&["user", "--help"])));
        assert_eq!(parse("reload", "/d").unwrap(), ConsoleCmd::Exec(v(&["reload", "--data-dir", "/d"])));
        assert_eq!(parse("network keep", "/d").unwrap(), ConsoleCmd::NetworkKeep);
        assert_eq!(parse("factory-reset", "/d").unwrap(), ConsoleCmd::FactoryReset { confirmed: false });
        assert_eq!(
            parse("factory-reset --yes", "/d").unwrap(),
            ConsoleCmd::FactoryReset { confirmed: true }
        );
        assert!(parse("factory-reset now", "/d").is_err());
        assert_eq!(
            parse("alerts --format jsonl", "/d").unwrap(),
            ConsoleCmd::Exec(v(&["alerts", "--data-dir", "/d", "--format", "jsonl"]))
        );
        assert_eq!(
            parse("watchdog-test writer --yes", "/d").unwrap(),
            ConsoleCmd::Exec(v(&["watchdog-test", "--data-dir", "/d", "writer", "--yes"]))
        );
        assert!(matches!(
            parse("watchdog-test --data-dir /x", "/d"),
            Err(ConsoleError::DataDirFixed)
        ));
        assert_eq!(
            parse("update http://10.0.2.2:8000/x.fwb --no-reboot", "/d").unwrap(),
            ConsoleCmd::Exec(v(&["update", "--data-dir", "/d", "http://10.0.2.2:8000/x.fwb", "--no-reboot"]))
        );
        assert_eq!(parse("update x --data-dir /e", "/d"), Err(ConsoleError::DataDirFixed));
        assert!(matches!(parse("network", "/d"), Err(ConsoleError::Unknown(_))));
        assert_eq!(parse("user list --data-dir /x", "/d"), Err(ConsoleError::DataDirFixed));
        assert_eq!(parse("", "/d").unwrap(), ConsoleCmd::Empty);
        assert!(parse("rm -rf /", "/d").unwrap_err().to_string().contains("unknown command \"rm\""));
        assert_eq!(parse("query --data-dir /etc", "/d"), Err(ConsoleError::DataDirFixed));
        assert_eq!(split_words("a \"b"), Err(ConsoleError::UnterminatedQuote('"')));
    }
}
