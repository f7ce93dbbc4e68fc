//! Configuration shared by the commands: TOML file + environment + flags.
//!
//! [`TimingArgs`] are the liveness flags every command that opens connections takes (`serve`, `demo`,
//! `connect`, `probe`, `bench`), so they spell the same everywhere. Durations are humantime strings
//! ("250ms", "30s").

use std::time::Duration;

use vitals::Codec;

/// Heartbeat timing and wire protocol.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TimingArgs {
    /// Ping after this much silence from the peer.
    #[arg(long, env = "VITALS_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub(crate) interval: Duration,
    /// Declare the peer dead after this much silence (must exceed the interval).
    #[arg(long, env = "VITALS_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub(crate) timeout: Duration,
    /// Wire protocol: `binary` (sessions, resume) or `json` (classic `{"ping":N}` peers).
    #[arg(long, env = "VITALS_CODEC", value_parser = parse_codec, default_value = "binary")]
    pub(crate) codec: Codec,
}

impl TimingArgs {
    /// Rejects combinations that cannot work, saying what to change.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.interval.is_zero() {
            anyhow::bail!("--interval must be greater than zero (e.g. --interval 1s)");
        }
        if self.timeout <= self.interval {
            anyhow::bail!(
                "--timeout ({}) must be greater than --interval ({}); e.g. --timeout {}",
                humantime::format_duration(self.timeout),
                humantime::format_duration(self.interval),
                humantime::format_duration(self.interval * 3)
            );
        }
        Ok(())
    }
}

/// Parses a humantime duration ("250ms", "30s", "1m").
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); try e.g. 250ms, 30s, 1m"))
}

/// Parses `binary` or `json`.
pub(crate) fn parse_codec(s: &str) -> Result<Codec, String> {
    match s {
        "binary" => Ok(Codec::Binary),
        "json" => Ok(Codec::Json),
        other => Err(format!("unknown codec `{other}`: use `binary` or `json`")),
    }
}

/// Where a setting's value came from, so that an error can say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A command-line flag, e.g. `--interval`.
    Flag(&'static str),
    /// An environment variable, e.g. `VITALS_INTERVAL`.
    Env(&'static str),
    /// A key of the TOML file at this path.
    File(String),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "from {flag}"),
            Source::Env(var) => write!(f, "from ${var}"),
            Source::File(path) => write!(f, "from {path}"),
            Source::Default => f.write_str("the default"),
        }
    }
}

/// A resolved value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sourced<T> {
    /// The value in force.
    pub(crate) value: T,
    /// Its origin.
    pub(crate) source: Source,
}

/// One setting's names in the three layers: `--flag`, `$VITALS_ENV`, `key` in the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Names {
    /// The flag, with its dashes (`--max-connections`).
    pub(crate) flag: &'static str,
    /// The environment variable (`VITALS_MAX_CONNECTIONS`).
    pub(crate) env: &'static str,
    /// The TOML key (`max_connections`).
    pub(crate) key: &'static str,
}

/// Resolves settings with the precedence flags > environment > file > defaults.
///
/// The environment is read through `env` (the process environment in the binary, a map in tests).
pub(crate) struct Layers<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file_path: Option<String>,
}

impl<'a> Layers<'a> {
    /// Layers over `env` and, if given, the file at `file_path` (whose values the caller passes in).
    pub(crate) fn new(env: &'a dyn Fn(&str) -> Option<String>, file_path: Option<String>) -> Self {
        Layers { env, file_path }
    }

    /// Picks the first value present among `flag`, the environment variable, `file`, `default`.
    /// Strings from the environment and the file go through `parse`; its error is prefixed with
    /// where the bad value came from.
    pub(crate) fn pick<T>(
        &self,
        names: Names,
        flag: Option<T>,
        file: Option<FileValue<T>>,
        parse: impl Fn(&str) -> Result<T, String>,
        default: T,
    ) -> anyhow::Result<Sourced<T>> {
        if let Some(value) = flag {
            return Ok(Sourced {
                value,
                source: Source::Flag(names.flag),
            });
        }
        if let Some(raw) = (self.env)(names.env) {
            let value = parse(raw.trim())
                .map_err(|e| anyhow::anyhow!("${}: {e} (unset it or fix its value)", names.env))?;
            return Ok(Sourced {
                value,
                source: Source::Env(names.env),
            });
        }
        if let Some(file) = file {
            let path = self
                .file_path
                .clone()
                .unwrap_or_else(|| "config file".into());
            let value = match file {
                FileValue::Typed(v) => v,
                FileValue::Text(raw) => {
                    parse(&raw).map_err(|e| anyhow::anyhow!("{path}: key `{}`: {e}", names.key))?
                }
            };
            return Ok(Sourced {
                value,
                source: Source::File(path),
            });
        }
        Ok(Sourced {
            value: default,
            source: Source::Default,
        })
    }
}

/// A value as the TOML file gave it: already typed (numbers, booleans) or text to parse.
#[derive(Debug, Clone)]
pub(crate) enum FileValue<T> {
    /// A value TOML typed for us.
    Typed(T),
    /// A string (duration, address, codec) to parse like a flag.
    Text(String),
}

/// The keys `vitals serve` takes from its TOML file (`--config vitals.toml`). Every key is optional;
/// an unknown key is an error, so that a typo is not silently ignored.
///
/// ```toml
/// listen = "127.0.0.1:7878"
/// interval = "1s"
/// timeout = "3s"
/// codec = "binary"            # or "json"
/// max_connections = 100000
/// loops = 2
/// processes = 1               # more: a supervisor of that many worker processes on one port
/// max_connection_age = "10m"  # or "off"
/// http = "127.0.0.1:9100"     # or "off"
/// echo = false
/// client_driven = false
/// drain = "5s"
/// store = "redis://127.0.0.1:6379/"   # or "memory" (docs/FLEET.md)
/// node = "edge-1"
/// partitions = 16
/// ```
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeFile {
    /// Address to listen on.
    pub(crate) listen: Option<String>,
    /// Heartbeat interval (humantime).
    pub(crate) interval: Option<String>,
    /// Dead timeout (humantime).
    pub(crate) timeout: Option<String>,
    /// `binary` or `json`.
    pub(crate) codec: Option<String>,
    /// Most open connections.
    pub(crate) max_connections: Option<u64>,
    /// Event-loop threads.
    pub(crate) loops: Option<u64>,
    /// Server processes on one port (a supervisor of workers when more than one).
    pub(crate) processes: Option<u64>,
    /// Close connections after this age (humantime, or `off`).
    pub(crate) max_connection_age: Option<String>,
    /// Status page address (or `off`).
    pub(crate) http: Option<String>,
    /// Echo every message back to its sender.
    pub(crate) echo: Option<bool>,
    /// Client-driven heartbeats.
    pub(crate) client_driven: Option<bool>,
    /// How long a graceful shutdown waits for queued bytes to leave.
    pub(crate) drain: Option<String>,
    /// Redis URL of a fleet's session store, or `memory`.
    pub(crate) store: Option<String>,
    /// Node id in a fleet.
    pub(crate) node: Option<String>,
    /// Partitions of a fleet.
    pub(crate) partitions: Option<u64>,
}

impl ServeFile {
    /// Reads and parses the file at `path`. Errors name the file, the line and what to change.
    pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<ServeFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text. An unknown key is rejected with the list of known ones.
    pub(crate) fn parse(text: &str) -> anyhow::Result<ServeFile> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let hint = if msg.contains("unknown field") {
                " — remove or rename that key"
            } else {
                ""
            };
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    anyhow::anyhow!("line {line}: {msg}{hint}")
                }
                None => anyhow::anyhow!("{msg}{hint}"),
            }
        })
    }
}

/// Parses a socket address such as `127.0.0.1:7878` or `[::1]:7878`.
pub(crate) fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an IP address with a port; e.g. 127.0.0.1:7878"))
}

/// Parses an optional socket address: `off` / `none` (or empty) disables.
pub(crate) fn parse_opt_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    match s {
        "" | "off" | "none" => Ok(None),
        other => parse_addr(other).map(Some),
    }
}

/// Parses a session store: `memory` (or `off`, empty) keeps sessions in the process; a
/// `redis://`, `rediss://` or `redis+unix://` URL names a fleet's Redis.
pub(crate) fn parse_opt_store(s: &str) -> Result<Option<String>, String> {
    match s {
        "" | "off" | "none" | "memory" => Ok(None),
        url if ["redis://", "rediss://", "redis+unix://"]
            .iter()
            .any(|p| url.starts_with(p)) =>
        {
            Ok(Some(url.to_string()))
        }
        other => Err(format!(
            "`{other}` is not a session store: give a redis:// URL, or `memory`"
        )),
    }
}

/// Parses an optional duration: `off` / `none` (or empty) disables.
pub(crate) fn parse_opt_duration(s: &str) -> Result<Option<Duration>, String> {
    match s {
        "" | "off" | "none" => Ok(None),
        other => parse_duration(other).map(Some),
    }
}

/// Parses a count (a non-negative integer; zero is caught by validation with a better message).
pub(crate) fn parse_count(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a whole number"))
}

/// Parses a boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean; use true or false")),
    }
}

/// Reads a pre-shared authentication token from `path` (`--auth-token-file`): the file's bytes with
/// one trailing newline (`\n` or `\r\n`) removed, 1 to 64 bytes. Errors name the file, never its
/// contents.
pub(crate) fn read_auth_token(path: &std::path::Path) -> anyhow::Result<vitals_proto::AuthToken> {
    use anyhow::Context;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --auth-token-file {}", path.display()))?;
    auth_token_from_file_bytes(&bytes)
        .with_context(|| format!("bad --auth-token-file {}", path.display()))
}

/// The token in a token file's bytes (one trailing newline removed).
fn auth_token_from_file_bytes(bytes: &[u8]) -> anyhow::Result<vitals_proto::AuthToken> {
    let t = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let t = t.strip_suffix(b"\r").unwrap_or(t);
    Ok(vitals_proto::AuthToken::new(t)?)
}

/// The name of a codec as flags and files spell it.
pub(crate) fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Binary => "binary",
        Codec::Json => "json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn auth_token_file_loses_one_trailing_newline() {
        let t = |b: &[u8]| auth_token_from_file_bytes(b).map(|t| t.as_bytes().to_vec());
        assert_eq!(t(b"abc\n").unwrap(), b"abc");
        assert_eq!(t(b"abc\r\n").unwrap(), b"abc");
        assert_eq!(t(b"abc").unwrap(), b"abc");
        assert_eq!(t(b"a c \n\n").unwrap(), b"a c \n");
        assert!(t(b"\n").is_err());
        let long = t(&[b'x'; 65]).unwrap_err().to_string();
        assert!(long.contains("65 bytes"), "{long}");
        assert!(!long.contains("xxx"), "{long}");
    }

    const INTERVAL: Names = Names {
        flag: "--interval",
        env: "VITALS_INTERVAL",
        key: "interval",
    };

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let env = env_of(&[("VITALS_INTERVAL", "2s")]);
        let layers = Layers::new(&env, Some("v.toml".into()));
        let file = || Some(FileValue::Text("3s".into()));
        let d = Duration::from_secs;
        let got = layers
            .pick(INTERVAL, Some(d(1)), file(), parse_duration, d(9))
            .unwrap();
        assert_eq!((got.value, got.source), (d(1), Source::Flag("--interval")));
        let got = layers
            .pick(INTERVAL, None, file(), parse_duration, d(9))
            .unwrap();
        assert_eq!(
            (got.value, got.source),
            (d(2), Source::Env("VITALS_INTERVAL"))
        );
        let no_env = env_of(&[]);
        let layers = Layers::new(&no_env, Some("v.toml".into()));
        let got = layers
            .pick(INTERVAL, None, file(), parse_duration, d(9))
            .unwrap();
        assert_eq!(
            (got.value, got.source),
            (d(3), Source::File("v.toml".into()))
        );
        let got = layers
            .pick(INTERVAL, None, None, parse_duration, d(9))
            .unwrap();
        assert_eq!((got.value, got.source), (d(9), Source::Default));
    }

    #[test]
    fn bad_values_name_their_origin() {
        let env = env_of(&[("VITALS_INTERVAL", "soon")]);
        let layers = Layers::new(&env, None);
        let err = layers
            .pick(INTERVAL, None, None, parse_duration, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("$VITALS_INTERVAL") && err.contains("not a duration"),
            "{err}"
        );
        let no_env = env_of(&[]);
        let layers = Layers::new(&no_env, Some("v.toml".into()));
        let err = layers
            .pick(
                INTERVAL,
                None,
                Some(FileValue::Text("soon".into())),
                parse_duration,
                Duration::ZERO,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("v.toml: key `interval`"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let err = ServeFile::parse("interval = \"1s\"\nintervall = \"2s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("intervall"), "{err}");
        assert!(err.contains("remove or rename"), "{err}");
        let ok = ServeFile::parse("listen = \"127.0.0.1:1\"\nmax_connections = 5\necho = true\n")
            .unwrap();
        assert_eq!(ok.max_connections, Some(5));
        assert_eq!(ok.echo, Some(true));
    }

    #[test]
    fn optional_values_can_be_switched_off() {
        assert_eq!(parse_opt_duration("off"), Ok(None));
        assert_eq!(
            parse_opt_duration("10m"),
            Ok(Some(Duration::from_secs(600)))
        );
        assert_eq!(parse_opt_addr("none"), Ok(None));
        assert!(parse_opt_addr("localhost").is_err());
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert!(parse_count("-1").is_err());
    }
}
