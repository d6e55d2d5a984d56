//! `portcullis admin bootstrap`: the first admin API key, made directly in
//! the stores a configuration names (later ones can be made through the
//! admin API itself: `POST /admin/users/admin:<name>/api-keys`).
//!
//! The key is an API key whose owner is `admin:<name>` holding `*` (or the
//! `--permission`s given, e.g. `admin.users.read` for a read-only operator,
//! or `admin.users.write` and `docs.*` for one who manages the users of the
//! docs app). No grant exceeds its granter: through the admin API a key can
//! give only what it holds, so the first key holds everything; an admin
//! key never works on the public listener, so `*` opens only the admin API
//! there. It is printed once, as JSON on stdout; only its keyed hash is
//! stored. Present it to the admin API on the ops listener as
//! `Authorization: Bearer pck_…`.
//!
//! The key is written to the stores of the configuration; with
//! `storage.url = "memory"` those live inside each process, so a key made
//! here would be unknown to the running gateway: that is refused (exit 2).

use std::path::PathBuf;

use clap::Args;
use portcullis::stores::NewApiKey;

use super::{CliError, console};
use crate::ops::admin::ADMIN_OWNER_PREFIX;

/// Arguments of `admin bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The gateway's configuration file (its `[storage]` is where the key goes).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Who the key is for: its owner becomes `admin:<NAME>`.
    #[arg(long, value_name = "NAME", default_value = "root")]
    pub name: String,
    /// A permission of the key (repeatable); default `*` (everything,
    /// which it may also grant).
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
        vec!["*".to_owned()]
    } else {
        args.permissions.clone()
    };
    if let Some((p, e)) = permissions.iter().find_map(|p| {
        portcullis_core::authz::Permission::parse(p)
            .err()
            .map(|e| (p, e))
    }) {
        return Err(CliError::Usage(format!(
            "--permission `{p}`: {e} (e.g. *, admin.*, admin.users.read, docs.*)"
        )));
    }
    let config = crate::config::load(&args.config).map_err(CliError::Config)?;
    if matches!(
        crate::config::StorageUrl::parse(&config.storage.url),
        Ok(crate::config::StorageUrl::Memory)
    ) {
        return Err(CliError::Usage(format!(
            "{}: storage.url = \"memory\" keeps the stores inside each process, so a key made here would be unknown to the running gateway; use a durable store (storage.url = \"sqlite://…\" or \"postgres://…\")",
            args.config.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)?;
    rt.block_on(async {
        let storage = crate::serve::storage::open(&config)
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
