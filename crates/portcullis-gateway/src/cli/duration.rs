//! The one duration syntax of every command (`token issue --ttl`, `bans add
//! --for`, `audit tail --interval`, `audit prune --older-than`, `audit query
//! --since 2h`): a positive whole number and one unit.

use std::time::Duration;

/// Longest accepted duration: 100 years.
const MAX_SECS: u64 = 100 * 365 * 86_400;

/// Parses `30s`, `15m`, `2h`, `7d` or `2w`: a positive whole number (ASCII
/// digits, no sign, no spaces) and one unit, at most 100 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let usage =
        || format!("`{text}` is not a duration; use a number and a unit: 30s, 15m, 2h, 7d, 2w");
    let (number, unit) = text
        .len()
        .checked_sub(1)
        .and_then(|at| text.split_at_checked(at))
        .ok_or_else(usage)?;
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(usage()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(usage());
    }
    let too_long = || format!("`{text}` is too long; the most is 100 years");
    let count: u64 = number.parse().map_err(|_| too_long())?;
    let secs = count
        .checked_mul(scale)
        .filter(|&s| s <= MAX_SECS)
        .ok_or_else(too_long)?;
    if secs == 0 {
        return Err(format!("`{text}` is zero; the least is 1s"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{AuditCommand, BansCommand, Cli, Command, TokenCommand};

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(
            parse_duration("5200w"),
            Ok(Duration::from_secs(5200 * 604_800))
        );
        for bad in [
            "",
            "s",
            "15",
            "1.5h",
            "-1m",
            "+1m",
            "1 m",
            " 15m",
            "15m ",
            "1y",
            "0s",
            "0w",
            "1é",
            "5300w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    /// Every command that takes a duration takes the same ones.
    #[test]
    fn every_command_parses_durations_alike() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["portcullis"], args].concat());
        for (text, ok) in [("2w", true), ("90s", true), (" 1h", false), ("0s", false)] {
            let token = parse(&[
                "token", "issue", "--key", "k.pem", "--sub", "s", "--ttl", text,
            ]);
            let ban = parse(&[
                "bans",
                "add",
                "--redis",
                "redis://x",
                "--ip",
                "192.0.2.1",
                "--for",
                text,
            ]);
            let prune = parse(&["audit", "prune", "--sqlite", "a.db", "--older-than", text]);
            let tail = parse(&["audit", "tail", "--sqlite", "a.db", "--interval", text]);
            let since = parse(&["audit", "query", "--sqlite", "a.db", "--since", text]);
            for (what, parsed) in [
                ("token issue --ttl", token.is_ok()),
                ("bans add --for", ban.is_ok()),
                ("audit prune --older-than", prune.is_ok()),
                ("audit tail --interval", tail.is_ok()),
                ("audit query --since", since.is_ok()),
            ] {
                assert_eq!(parsed, ok, "{what} {text:?}");
            }
            if ok {
                let want = parse_duration(text).expect("valid");
                let Ok(Cli {
                    command: Command::Token(TokenCommand::Issue(a)),
                }) = token
                else {
                    panic!("token issue");
                };
                assert_eq!(a.ttl, want);
                assert!(matches!(
                    ban,
                    Ok(Cli {
                        command: Command::Bans(BansCommand::Add(_))
                    })
                ));
                assert!(matches!(
                    prune,
                    Ok(Cli {
                        command: Command::Audit(AuditCommand::Prune(_))
                    })
                ));
            }
        }
    }
}
