//! The duration syntax of every command (`token issue --ttl`, `bans add
//! --for`, `audit tail --interval`, `audit prune --older-than`, `audit query
//! --since 2h`): the one of the configuration file too, from the core
//! (`250ms`, `30s`, `15m`, `2h`, `7d`, `2w`; positive, at most 100 years).

pub use portcullis_core::duration::parse_duration;

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use std::time::Duration;

    use super::*;
    use crate::cli::{AuditCommand, BansCommand, Cli, Command, TokenCommand};

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
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

    /// Ids are base64url: one that starts with `-` is an id, not a flag,
    /// before or after the options (it failed `users disable -6…`); and
    /// `apps rotate` needs no `--grace` (its default of `0s` was refused).
    #[test]
    fn ids_that_start_with_a_hyphen_are_ids() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["portcullis"], args].concat());
        for args in [
            &["users", "disable", "-6abc", "--admin", "http://x"][..],
            &["users", "disable", "--admin", "http://x", "-6abc"],
            &["users", "grants", "-6abc", "--admin", "http://x"],
            &[
                "users",
                "password",
                "-6abc",
                "--password-file",
                "f",
                "--admin",
                "http://x",
            ],
            &["apps", "rotate", "-6abc", "--admin", "http://x"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}: {:?}", parse(args).err());
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
