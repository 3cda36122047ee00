//! `token create|list|revoke`: API tokens in `<data_dir>/secrets.toml`, kept as SHA-256
//! digests (the token itself is printed once and never stored). The file is rewritten
//! atomically (temporary file + rename, mode 0600) in the format `serve` reads.

use std::io::Write;
use std::path::Path;

use ledger_events::Cnpj;

use super::{parse_flag, CliError};
use crate::clock::{Clock, SystemClock};
use crate::config::{new_token, token_digest, token_id, Role, SecretsFile, TokenEntry};

/// The `token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints it alone on the last line (shown only this once).
    Create(CreateArgs),
    /// List tokens: name, role, CNPJ, created, id, and a relay token's certified key id
    /// (never the secret).
    List,
    /// Revoke a token by its name or its id (from `token list`).
    Revoke(RevokeArgs),
    /// Revoke the answer-signing key a relay token has certified (one per relay token): the
    /// center then certifies the next key that token presents. Certificates already issued
    /// for the revoked key stay valid until their `valid_until` (30 days at most).
    RevokeKey(RevokeArgs),
}

/// Options of `token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// terminal, support, auditor or admin.
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// The customer a terminal token is bound to (required for --role terminal only).
    #[arg(long, value_name = "CNPJ")]
    pub cnpj: Option<String>,
    /// A label shown in logs and recorded as the actor of its commands [default:
    /// `<role>-<id>`].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// Options of `token revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The token's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    pub name_or_id: String,
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<Role, CliError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "terminal" => Ok(Role::Terminal),
        "support" => Ok(Role::Support),
        "auditor" => Ok(Role::Auditor),
        "admin" => Ok(Role::Admin),
        "relay" => Ok(Role::Relay),
        other => Err(CliError::Input {
            flag: "--role",
            message: format!(
                "unknown role {other:?}; use terminal, support, auditor, admin or relay"
            ),
        }),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Terminal => "terminal",
        Role::Support => "support",
        Role::Auditor => "auditor",
        Role::Admin => "admin",
        Role::Relay => "relay",
    }
}

/// Runs a `token` subcommand.
pub fn run(data_dir: &Path, command: TokenCommand, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        TokenCommand::Create(args) => create(data_dir, &args, out),
        TokenCommand::List => list(data_dir, out),
        TokenCommand::Revoke(args) => revoke(data_dir, &args, out),
        TokenCommand::RevokeKey(args) => revoke_key(data_dir, &args, out),
    }
}

fn create(data_dir: &Path, args: &CreateArgs, out: &mut impl Write) -> Result<(), CliError> {
    let role = parse_role(&args.role)?;
    let cnpj = match (&args.cnpj, role) {
        (Some(c), _) => Some(parse_flag(
            "--cnpj",
            c,
            Cnpj::parse,
            "pass the customer's 14-character CNPJ, e.g. 11222333000181",
        )?),
        (None, r) if r.is_bound_to_customer() => {
            return Err(CliError::Input {
                flag: "--cnpj",
                message: format!(
                    "a {} token is bound to one customer: pass --cnpj CNPJ",
                    role_name(r)
                ),
            })
        }
        (None, _) => None,
    };
    if cnpj.is_some() && !role.is_bound_to_customer() {
        return Err(CliError::Input {
            flag: "--cnpj",
            message: "only terminal and relay tokens are bound to a customer; drop --cnpj or \
                      use --role terminal or --role relay"
                .into(),
        });
    }
    let token = new_token()?;
    let sha256 = hex::encode(token_digest(&token));
    let name = match &args.name {
        Some(n) => n.trim().to_owned(),
        None => format!("{}-{}", role_name(role), &sha256[..8]),
    };
    parse_flag(
        "--name",
        &name,
        crate::config::check_token_name,
        "use a short label such as caixa-loja-3",
    )?;
    let entry = TokenEntry {
        name,
        sha256,
        role,
        cnpj,
    };
    std::fs::create_dir_all(data_dir)?;
    let (mut file, admin) = SecretsFile::load_or_create(data_dir)?;
    if let Some(admin) = admin {
        writeln!(
            out,
            "Created {} with an admin token (shown only this once): {admin}",
            file.path().display()
        )?;
    }
    file.add_token_at(entry.clone(), SystemClock.now())
        .map_err(|e| match e {
            crate::config::ConfigError::NameTaken { .. } => CliError::Input {
                flag: "--name",
                message: e.to_string(),
            },
            e => e.into(),
        })?;
    eprintln!("note: a running server picks the token up within about a second");
    writeln!(
        out,
        "Created {} token {:?} (id {}){}; it is shown only this once:",
        role_name(role),
        entry.name,
        token_id(&entry),
        entry.cnpj.map(|c| format!(" for {c}")).unwrap_or_default()
    )?;
    writeln!(out, "{token}")?;
    Ok(())
}

fn load_existing(data_dir: &Path) -> Result<SecretsFile, CliError> {
    let path = data_dir.join(crate::config::SECRETS_FILE_NAME);
    if !path.is_file() {
        return Err(CliError::Refused(format!(
            "{} does not exist; pass the server's --data-dir, or create a token first with \
             `token create`",
            path.display()
        )));
    }
    Ok(SecretsFile::load_or_create(data_dir)?.0)
}

fn list(data_dir: &Path, out: &mut impl Write) -> Result<(), CliError> {
    let file = load_existing(data_dir)?;
    let rows: Vec<[String; 6]> = file
        .tokens
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                role_name(t.role).to_owned(),
                t.cnpj.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                file.created(t).unwrap_or("-").to_owned(),
                token_id(t).to_owned(),
                file.relay_key(t)
                    .map(|k| format!("{} since {}", k.key_id(), k.since))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["NAME", "ROLE", "CNPJ", "CREATED", "ID", "RELAY KEY"].map(String::from);
    super::table::write_columns(out, &header, &rows)?;
    Ok(())
}

fn revoke(data_dir: &Path, args: &RevokeArgs, out: &mut impl Write) -> Result<(), CliError> {
    let mut file = load_existing(data_dir)?;
    let removed = file
        .remove_token(args.name_or_id.trim())
        .map_err(|e| match e {
            crate::config::ConfigError::Invalid { message, .. } => CliError::Input {
                flag: "NAME_OR_ID",
                message,
            },
            other => other.into(),
        })?;
    eprintln!("note: a running server stops accepting the token within about a second");
    writeln!(
        out,
        "Revoked {} token {:?} (id {})",
        role_name(removed.role),
        removed.name,
        token_id(&removed)
    )?;
    Ok(())
}

fn revoke_key(data_dir: &Path, args: &RevokeArgs, out: &mut impl Write) -> Result<(), CliError> {
    let mut file = load_existing(data_dir)?;
    let name_or_id = args.name_or_id.trim();
    let revoked = file.revoke_relay_key(name_or_id).map_err(|e| match e {
        crate::config::ConfigError::Invalid { message, .. } => CliError::Input {
            flag: "NAME_OR_ID",
            message,
        },
        other => other.into(),
    })?;
    writeln!(
        out,
        "Revoked the relay key {} of token {name_or_id:?} (certified since {}); the token's \
         next certificate request pins the key it presents. Certificates already issued for \
         it stay valid until their valid_until.",
        revoked.key_id(),
        revoked.since
    )?;
    Ok(())
}
