//! `portcullis admin bootstrap`: the first admin API key, made directly in
//! the stores a configuration names (later ones can be made through the
//! admin API itself: `POST /admin/users/admin:<name>/api-keys`).
//!
//! The key is an API key whose owner is `admin:<name>` holding `admin.*`
//! (or the `--permission`s given, e.g. `admin.users.read` for a read-only
//! operator). It is printed once, as JSON on stdout; only its keyed hash is
//! stored. Present it to the admin API on the ops listener as
//! `Authorization: Bearer pck_…`.

use std::path::PathBuf;

use clap::Args;
use portcullis::stores::NewApiKey;

use super::{CliError, console};
use crate::admin::ADMIN_OWNER_PREFIX;

/// Arguments of `admin bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The gateway's configuration file (its `[storage]` is where the key goes).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Who the key is for: its owner becomes `admin:<NAME>`.
    #[arg(long, value_name = "NAME", default_value = "root")]
    pub name: String,
    /// A permission of the key (repeatable); default `admin.*`.
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,
}

/// Creates the key and prints it once.
pub fn bootstrap(args: &BootstrapArgs) -> Result<(), CliError> {
    if args.name.is_empty()
        || args.name.len() > 64
        || !args
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(CliError::Usage("--name is 1-64 of [A-Za-z0-9._-]".into()));
    }
    let permissions = if args.permissions.is_empty() {
        vec!["admin.*".to_owned()]
    } else {
        args.permissions.clone()
    };
    if let Some(p) = permissions.iter().find(|p| !p.starts_with("admin.")) {
        return Err(CliError::Usage(format!(
            "`{p}` is not an admin permission (admin.*, admin.users.read, …)"
        )));
    }
    let config = crate::config::load(&args.config).map_err(CliError::Config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    rt.block_on(async {
        let storage = crate::storage::open(&config)
            .await
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let created = storage
            .stores
            .create_api_key(&NewApiKey {
                name: format!("admin {}", args.name),
                owner: format!("{ADMIN_OWNER_PREFIX}{}", args.name),
                permissions,
                ..NewApiKey::default()
            })
            .await
            .map_err(|e| CliError::Usage(format!("cannot create the admin key: {e}")))?;
        if let Some(audit) = &storage.audit {
            audit.shutdown().await;
        }
        eprintln!(
            "admin API key for `{}{}`: shown this once; send it to the ops listener as `Authorization: Bearer <key>`",
            ADMIN_OWNER_PREFIX, args.name
        );
        console::print_json(&serde_json::json!({
            "key": created.key,
            "id": created.record.id,
            "owner": created.record.owner,
            "permissions": created.record.permissions,
        }))
    })
}
