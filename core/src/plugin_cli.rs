//! `streamflow plugin new | build | inspect`: the developer's side of plugins.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Subcommand;
use streamflow_runtime::manifest::valid_id;
use streamflow_runtime::{Manifest, Package};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin crate (a lead scorer to start from) that builds as it is.
    New {
        /// The plugin id, e.g. `acme-scorer`; also the directory name.
        name: String,
        /// Where to create it (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path of the streamflow-plugin-sdk crate (default: the one in this source tree).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Compile a plugin crate for wasm32-wasip2 (release) and write one package file.
    Build {
        /// The crate directory, holding Cargo.toml and plugin.toml.
        dir: PathBuf,
        /// The package to write (default: ./<id>-<version>.plugin.wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print a package's manifest and the WIT world it targets.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir, sdk } => scaffold(&name, dir, sdk),
        PluginCommand::Build { dir, output } => {
            tokio::task::spawn_blocking(move || build(&dir, output.as_deref()).map(|_| ())).await?
        }
        PluginCommand::Inspect { file, json } => inspect(&file, json),
    }
}

/// Reads `plugin.toml` and inlines its config schema file.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; a plugin crate needs a plugin.toml beside Cargo.toml",
            path.display()
        )
    })?;
    let mut manifest =
        Manifest::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(config) = manifest.config.as_mut()
        && let Some(file) = config.schema_file.take()
    {
        if config.schema.is_some() {
            bail!(
                "{}: [config] has both schema and schema-file; keep one",
                path.display()
            );
        }
        let schema_path = dir.join(&file);
        let text = std::fs::read_to_string(&schema_path)
            .with_context(|| format!("cannot read the config schema {}", schema_path.display()))?;
        let schema = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", schema_path.display()))?;
        config.schema = Some(schema);
    }
    manifest
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(schema) = manifest.config.as_ref().and_then(|c| c.schema.as_ref()) {
        crate::records::compile_schema(schema).map_err(|e| {
            anyhow::anyhow!("{}: the config schema is unusable: {e}", path.display())
        })?;
    }
    Ok(manifest)
}

/// Builds the crate in `dir` and writes its package; returns the package path.
pub fn build(dir: &Path, output: Option<&Path>) -> anyhow::Result<PathBuf> {
    let manifest = read_manifest(dir)?;
    let cargo_toml = dir.join("Cargo.toml");
    if !cargo_toml.exists() {
        bail!(
            "{} is missing; `streamflow plugin new <name>` makes a plugin crate",
            cargo_toml.display()
        );
    }
    eprintln!(
        "Building {} {} for wasm32-wasip2 (release)...",
        manifest.id, manifest.version
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&cargo_toml)
        // Debug info is most of a component's size and nobody debugs inside the sandbox;
        // LTO in one codegen unit makes a small component that runs faster.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run cargo; install Rust from https://rustup.rs")?;
    let canonical_manifest = cargo_toml.canonicalize()?;
    let mut component: Option<PathBuf> = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let same_crate = message["manifest_path"]
            .as_str()
            .and_then(|p| Path::new(p).canonicalize().ok())
            .is_some_and(|p| p == canonical_manifest);
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if same_crate && is_cdylib {
            component = message["filenames"]
                .as_array()
                .and_then(|f| {
                    f.iter()
                        .filter_map(|f| f.as_str())
                        .find(|f| f.ends_with(".wasm"))
                })
                .map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo could not build the plugin (see its errors above). If it says the wasm32-wasip2 target is missing, run `rustup target add wasm32-wasip2`."
        );
    }
    let component = component.ok_or_else(|| {
        anyhow::anyhow!("cargo built no WebAssembly library; set `crate-type = [\"cdylib\"]` under [lib] in Cargo.toml")
    })?;
    let bytes =
        std::fs::read(&component).with_context(|| format!("reading {}", component.display()))?;
    let package = Package::assemble(&manifest, &bytes)
        .map_err(|e| anyhow::anyhow!("the component does not match plugin.toml: {e}"))?;
    let output = output.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from(format!("{}-{}.plugin.wasm", manifest.id, manifest.version))
    });
    std::fs::write(&output, &package).with_context(|| format!("writing {}", output.display()))?;
    let parsed = Package::parse(package)?;
    println!(
        "Wrote {} ({} KiB, sha256 {})\n  {} {} for {}; hooks: {}; capabilities: {}",
        output.display(),
        parsed.bytes.len().div_ceil(1024),
        parsed.sha256,
        manifest.id,
        manifest.version,
        parsed.info.world(),
        join(manifest.hooks.iter().map(|h| h.as_str())),
        join(manifest.capabilities.iter().map(|c| c.as_str())),
    );
    Ok(output)
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn inspect(file: &Path, as_json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let package = Package::parse(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a usable package: {e}", file.display()))?;
    let m = &package.manifest;
    if as_json {
        let out = serde_json::json!({
            "manifest": m,
            "world": package.info.world(),
            "imports": package.info.imports,
            "exports": package.info.exports,
            "sha256": package.sha256,
            "size": package.bytes.len(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} {} ({})", m.id, m.version, m.name);
    if let Some(d) = &m.description {
        println!("  {d}");
    }
    println!("world:         {}", package.info.world());
    println!("api:           {}", m.api);
    println!(
        "hooks:         {}",
        join(m.hooks.iter().map(|h| h.as_str()))
    );
    println!(
        "capabilities:  {}",
        join(m.capabilities.iter().map(|c| c.as_str()))
    );
    println!(
        "subscriptions: {}",
        join(m.subscriptions.iter().map(String::as_str))
    );
    println!(
        "actions:       {}",
        join(m.actions.iter().map(String::as_str))
    );
    println!(
        "limits:        {} ms, {} MiB memory, {} KiB output",
        m.limits.timeout_ms, m.limits.memory_mb, m.limits.output_kb
    );
    println!(
        "secret fields: {}",
        join(m.secret_fields().iter().map(String::as_str))
    );
    println!(
        "size:          {} bytes, sha256 {}",
        package.bytes.len(),
        package.sha256
    );
    println!("imports:");
    for i in &package.info.imports {
        println!("  {i}");
    }
    println!("exports:");
    for e in &package.info.exports {
        println!("  {e}");
    }
    println!(
        "config schema:\n{}",
        serde_json::to_string_pretty(&m.config_schema())?
    );
    Ok(())
}

fn scaffold(name: &str, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<()> {
    if !valid_id(name) {
        bail!(
            "{name:?} is not a plugin id: use 2 to 64 lowercase letters, digits, '-' or '.', starting with a letter"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        );
    }
    let sdk = match sdk {
        Some(path) => path,
        None => {
            let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
            if !bundled.join("Cargo.toml").exists() {
                bail!("cannot find the plugin SDK; pass --sdk <path to streamflow-plugin-sdk>");
            }
            bundled
        }
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the SDK path {} does not exist", sdk.display()))?;
    let crate_name = name.replace('.', "-");
    std::fs::create_dir_all(dir.join("src"))?;
    let files = [
        (
            "Cargo.toml",
            CARGO_TEMPLATE
                .replace("{crate}", &crate_name)
                .replace("{sdk}", &sdk.display().to_string().replace('\\', "/")),
        ),
        ("plugin.toml", MANIFEST_TEMPLATE.replace("{id}", name)),
        ("src/lib.rs", LIB_TEMPLATE.to_string()),
        (".gitignore", "target/\n*.plugin.wasm\n".to_string()),
    ];
    for (file, text) in files {
        std::fs::write(dir.join(file), text)?;
    }
    println!(
        "Created the plugin {name} in {}\nNext: edit src/lib.rs and plugin.toml, then `streamflow plugin build {}`",
        dir.display(),
        dir.display()
    );
    Ok(())
}

const CARGO_TEMPLATE: &str = r#"[package]
name = "{crate}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
streamflow-plugin-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
strip = true

# A plugin is its own workspace, wherever it lives.
[workspace]
"#;

const MANIFEST_TEMPLATE: &str = r#"id = "{id}"
name = "{id}"
version = "0.1.0"
api = "0.2.0"
description = "Scores leads by budget."
hooks = ["score-lead"]
# Capabilities the provider may grant: kv, records:read, records:read-pii, records:write, events,
# http (outbound requests to the hosts of an [http] table, and connections), secrets.
capabilities = []

[limits]
timeout-ms = 100
memory-mb = 16
output-kb = 16

[config.schema]
type = "object"
additionalProperties = false
properties = { hot_budget = { type = "number", minimum = 0, default = 10000, description = "Budget from which a lead is hot" } }
"#;

const LIB_TEMPLATE: &str = r#"//! A StreamFlow plugin. `streamflow plugin build .` compiles and packages it.

use serde::Deserialize;
use streamflow_plugin_sdk::{Error, Lead, Plugin, Score, Temperature, config};

#[derive(Deserialize)]
struct Settings {
    #[serde(default = "default_hot_budget")]
    hot_budget: f64,
}

fn default_hot_budget() -> f64 {
    10_000.0
}

struct MyPlugin;

impl Plugin for MyPlugin {
    fn score_lead(lead: Lead) -> Result<Score, Error> {
        let settings: Settings = config::get()?;
        let data = lead.json()?;
        let budget = data.get("budget").and_then(|b| b.as_f64());
        let hot = budget.is_some_and(|b| b >= settings.hot_budget);
        Ok(Score {
            value: if hot { 85 } else { 35 },
            temperature: if hot { Temperature::Hot } else { Temperature::Cold },
            confidence: if budget.is_some() { 0.9 } else { 0.3 },
            reasons: vec![match budget {
                Some(b) => format!("budget {b} against a hot threshold of {}", settings.hot_budget),
                None => "no budget given".to_string(),
            }],
        })
    }
}

streamflow_plugin_sdk::export!(MyPlugin);
"#;
