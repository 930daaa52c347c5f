//! Which server a command goes to, and with what credential: `--url`
//! with `--key` / KEYLEDGER_API_KEY or the operator token, or the login
//! stored by `keyledger login` (`<config dir>/keyledger/login.json`, owner
//! only). Also the generated shell completions and man page.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use serde::{Deserialize, Serialize};

use crate::cli::{Args, AuditCmd, Cmd, Failure, Result};
use crate::evidence_cli::EvidenceCmd;
use crate::output::Out;
use crate::remote::{Credential, Remote, whoami_text};

/// A stored login: a server and an API key, and the tenant position of
/// the newest write seen through it (`Keyledger-Position`), so the next
/// command's reads see it even through another node.
#[derive(Serialize, Deserialize)]
struct Login {
    url: String,
    key: String,
    #[serde(default)]
    position: u64,
}

/// `KEYLEDGER_POSITION`: a tenant position (from a write's
/// `Keyledger-Position`) the command's reads must see.
const POSITION_ENV: &str = "KEYLEDGER_POSITION";

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The directory `login.json` is kept in: `$XDG_CONFIG_HOME/keyledger`,
/// or `~/.config/keyledger`.
fn config_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => {
                return Err(Failure::msg(
                    "no config directory: set HOME or XDG_CONFIG_HOME",
                ));
            }
        },
    };
    Ok(base.join("keyledger"))
}

fn login_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("login.json"))
}

/// The stored login, if any (none without a config directory).
fn stored() -> Result<Option<Login>> {
    let Ok(path) = login_path() else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Failure::msg(format!(
                "{}: not a keyledger login ({e}); `keyledger logout` removes it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::msg(format!("{}: {e}", path.display()))),
    }
}

/// Commands that run on this machine only.
fn local_only(cmd: &Cmd) -> Option<&'static str> {
    Some(match cmd {
        Cmd::Serve(_) => "serve",
        Cmd::Demo => "demo",
        Cmd::Replay => "replay",
        Cmd::Recover { .. } => "recover",
        Cmd::Audit(AuditCmd::Evidence(EvidenceCmd::VerifyBundle { .. })) => {
            // Offline by design: nothing to ask a server.
            return None;
        }
        _ => return None,
    })
}

/// The server `args` send the command to, if any: `--url` (or
/// KEYLEDGER_URL), else the stored login unless `--data` (or
/// KEYLEDGER_DATA) names a data directory.
pub fn remote_for(args: &Args) -> Result<Option<Remote>> {
    if matches!(
        args.command,
        Cmd::Audit(AuditCmd::Evidence(
            EvidenceCmd::VerifyBundle { .. } | EvidenceCmd::VerifyReceipt { .. }
        ))
    ) {
        return Ok(None);
    }
    if let Some(name) = local_only(&args.command) {
        if let Some(url) = &args.url {
            return Err(Failure::msg(format!(
                "`{name}` runs on a data directory, not against a server: drop --url {url} \
                 (or unset KEYLEDGER_URL)"
            )));
        }
        return Ok(None);
    }
    let given = match &args.key {
        Some(k) => Some(Credential::Key(k.trim().to_owned())),
        None => crate::remote::operator_token(args.operator_token_file.as_ref())?
            .map(Credential::Operator),
    };
    // The stored login is read only when it may be used.
    let login = match (&args.url, &given) {
        (Some(_), Some(_)) => None,
        (None, _) if args.data_given => None,
        _ => stored()?,
    };
    let url = match (&args.url, &login) {
        (Some(u), _) => u.clone(),
        (None, Some(l)) => l.url.clone(),
        (None, None) => return Ok(None),
    };
    let given_position = match std::env::var(POSITION_ENV) {
        Ok(p) => Some(p.trim().parse::<u64>().map_err(|_| {
            Failure::msg(format!(
                "{POSITION_ENV}={p}: give a tenant position, a whole number (a write's \
                 Keyledger-Position)"
            ))
        })?),
        Err(_) => None,
    };
    let mut kept = 0;
    let credential = if let Some(c) = given {
        c
    } else if let Some(l) = login.filter(|l| same_url(&l.url, &url)) {
        kept = l.position;
        Credential::Key(l.key)
    } else if matches!(args.command, Cmd::Verify { .. }) {
        // The key checked is the credential.
        Credential::Key(String::new())
    } else {
        return Err(Failure::msg(format!(
            "--url {url}: give a credential: an API key (KEYLEDGER_API_KEY or --key), the \
             operator token (KEYLEDGER_OPERATOR_TOKEN or --operator-token-file), or run \
             `keyledger login`"
        )));
    };
    let remote = Remote::new(&url, credential)?;
    Ok(Some(match given_position {
        Some(p) => remote.with_position(p, false),
        None => remote.with_position(kept, true),
    }))
}

/// After a command against the stored login's server with its key: keeps
/// the newest position seen, so the next command's reads see this one's
/// writes on any node (or forgets one the server refused: a server since
/// reset). Best effort: the command's answer stands either way.
pub fn remember_position(remote: &Remote) {
    let Ok(Some(mut login)) = stored() else {
        return;
    };
    if !same_url(&login.url, remote.url())
        || !remote.uses_key(&login.key)
        || !(remote.position() > login.position || remote.position_dropped())
    {
        return;
    }
    login.position = remote.position();
    if let Err(e) = save(&login) {
        tracing::debug!(error = %e, "could not keep the position in the stored login");
    }
}

/// `keyledger login`: checks the key against the server (`whoami`) and
/// stores the URL and the key, readable by the user only.
pub fn login(args: &Args, out: &Out) -> Result<ExitCode> {
    let Some(url) = &args.url else {
        return Err(Failure::msg(
            "give the server: keyledger login --url https://… (or set KEYLEDGER_URL)",
        ));
    };
    if args.key_in_argument {
        return Err(Failure::msg(
            "login reads the API key from standard input or KEYLEDGER_API_KEY, never from \
             --key (an argument lands in shell history)",
        ));
    }
    let key = match &args.key {
        Some(k) => k.trim().to_owned(),
        None => read_key()?,
    };
    if key.is_empty() {
        return Err(Failure::msg("no API key on standard input"));
    }
    let remote = Remote::new(url, Credential::Key(key.clone()))?;
    let me = remote.whoami()?;
    save(&Login {
        url: url.trim_end_matches('/').to_owned(),
        key,
        position: 0,
    })?;
    let path = login_path()?;
    out.value(
        &serde_json::json!({ "url": url, "stored": path.display().to_string(), "whoami": &me }),
        || {
            format!(
                "logged in to {url}\n{}\n(stored in {}, readable by you only; `keyledger logout` forgets it)",
                whoami_text(&me),
                path.display()
            )
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The key from standard input: a prompt on a terminal, else the first line.
fn read_key() -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // Typed at a terminal: not echoed (nor left in its scrollback).
        let key = rpassword::prompt_password("API key (not shown; or set KEYLEDGER_API_KEY): ")?;
        return Ok(key.trim().to_owned());
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

/// Writes the login: the directory 0700, the file 0600, replaced whole.
fn save(login: &Login) -> Result<()> {
    let dir = config_dir()?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .map_err(|e| Failure::msg(format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = dir.join("login.json");
    let tmp = dir.join("login.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .map_err(|e| Failure::msg(format!("{}: {e}", tmp.display())))?;
    file.write_all(&serde_json::to_vec_pretty(login)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// `keyledger logout`: removes the stored login.
pub fn logout(out: &Out) -> Result<ExitCode> {
    let path = login_path()?;
    let was = stored().ok().flatten().map(|l| l.url);
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Failure::msg(format!("{}: {e}", path.display()))),
    };
    out.value(
        &serde_json::json!({ "logged_out": removed, "url": was }),
        || match (&was, removed) {
            (Some(u), true) => format!("logged out of {u}"),
            (None, true) => format!("removed {}", path.display()),
            _ => "not logged in".to_owned(),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `keyledger completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = Args::command();
    clap_complete::generate(shell, &mut cmd, "keyledger", &mut std::io::stdout().lock());
    Ok(ExitCode::SUCCESS)
}

/// `keyledger man`: the man page, roff on standard output.
pub fn man() -> Result<ExitCode> {
    clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}
