//! Plugin packages: one file holding the component with its manifest.
//!
//! A package *is* the WebAssembly component, with the manifest (as JSON) in a custom
//! section named [`MANIFEST_SECTION`]. Any component tool can still read it, and the
//! manifest cannot be separated from the code it describes.

use sha2::{Digest, Sha256};
use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};

use crate::manifest::{Capability, Hook, Manifest};

/// Name of the custom section that carries the manifest.
pub const MANIFEST_SECTION: &str = "streamflow-manifest";

/// Largest manifest accepted (its schema included).
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// WASI interfaces a plugin may import. They are backed by an empty context: no files, no
/// environment, no arguments, no network. Sockets and outbound HTTP are not among them.
const WASI_ALLOWED: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// Why a package was refused; each message names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct PackageError(pub Vec<String>);

impl PackageError {
    fn one(message: impl Into<String>) -> Self {
        PackageError(vec![message.into()])
    }
}

/// A parsed, checked package.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Manifest,
    /// The whole file; wasmtime compiles it as it is.
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
    pub info: ComponentInfo,
}

/// What a component imports and exports at its top level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentInfo {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl ComponentInfo {
    /// The `streamflow:plugin` versions the component uses, e.g. `["0.1.0"]`.
    pub fn api_versions(&self) -> Vec<String> {
        let mut versions: Vec<String> = self
            .imports
            .iter()
            .chain(&self.exports)
            .filter_map(|name| name.strip_prefix("streamflow:plugin/"))
            .filter_map(|rest| rest.split_once('@').map(|(_, v)| v.to_string()))
            .collect();
        versions.sort();
        versions.dedup();
        versions
    }

    /// The world the component targets, e.g. `streamflow:plugin/plugin@0.1.0`.
    pub fn world(&self) -> String {
        match self.api_versions().as_slice() {
            [] => "none (the component neither imports nor exports streamflow:plugin)".to_string(),
            [v] => format!("streamflow:plugin/plugin@{v}"),
            many => format!("mixed streamflow:plugin versions {}", many.join(", ")),
        }
    }
}

impl Package {
    /// Join a manifest and a component built for it into one package file, after checking
    /// that they agree.
    pub fn assemble(manifest: &Manifest, component: &[u8]) -> Result<Vec<u8>, PackageError> {
        manifest.validate().map_err(|e| PackageError(e.0))?;
        let (info, existing) = read_component(component)?;
        if existing.is_some() {
            return Err(PackageError::one(
                "the component already carries a manifest: build from the crate, not from a package",
            ));
        }
        check(manifest, &info)?;
        let json = serde_json::to_vec(manifest)
            .map_err(|e| PackageError::one(format!("manifest: {e}")))?;
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(PackageError::one(format!(
                "manifest is {} bytes; at most {MAX_MANIFEST_BYTES}",
                json.len()
            )));
        }
        let mut out = component.to_vec();
        append_custom_section(&mut out, MANIFEST_SECTION, &json);
        Ok(out)
    }

    /// Read and check a package file: the component must be valid, carry a valid manifest,
    /// and match it (hooks exported, imports declared, API version).
    pub fn parse(bytes: Vec<u8>) -> Result<Package, PackageError> {
        let (info, manifest) = read_component(&bytes)?;
        let manifest_bytes = manifest.ok_or_else(|| {
            PackageError::one(format!(
                "no manifest: this is a bare component; package it with `streamflow plugin build` (custom section {MANIFEST_SECTION:?} missing)"
            ))
        })?;
        let manifest = Manifest::from_json(&manifest_bytes).map_err(|e| PackageError(e.0))?;
        manifest.validate().map_err(|e| PackageError(e.0))?;
        check(&manifest, &info)?;
        let mut validator = Validator::new_with_features(WasmFeatures::default());
        validator
            .validate_all(&bytes)
            .map_err(|e| PackageError::one(format!("invalid component: {e}")))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        Ok(Package {
            manifest,
            bytes,
            sha256,
            info,
        })
    }
}

/// Check a component's imports and exports against its manifest.
pub fn check(manifest: &Manifest, info: &ComponentInfo) -> Result<(), PackageError> {
    let api = manifest.api.to_string();
    let mut errors = Vec::new();
    let versions = info.api_versions();
    if versions.iter().any(|v| *v != api) {
        errors.push(format!(
            "the component targets streamflow:plugin@{} but the manifest declares api {api}",
            versions.join(", ")
        ));
    }
    for hook in &manifest.hooks {
        let export = format!("streamflow:plugin/{}@{api}", hook.interface());
        if !info.exports.contains(&export) {
            errors.push(format!(
                "hook {hook}: the component does not export {export}"
            ));
        }
    }
    for import in &info.imports {
        if let Some(rest) = import.strip_prefix("streamflow:plugin/") {
            let interface = rest.split('@').next().unwrap_or(rest);
            let needs: &[Capability] = match interface {
                "log" | "config" | "types" => &[],
                "kv" => &[Capability::Kv],
                "records" | "keyed-records" => &[Capability::RecordsRead, Capability::RecordsWrite],
                "events" => &[Capability::Events],
                "limits" | "schedule-control" => &[],
                "http" | "connections" => &[Capability::Http],
                "secrets" => &[Capability::Secrets],
                _ => {
                    errors.push(format!("imports {import}, which this host does not offer"));
                    continue;
                }
            };
            if !needs.is_empty() && !needs.iter().any(|c| manifest.requests(*c)) {
                let names: Vec<&str> = needs.iter().map(|c| c.as_str()).collect();
                errors.push(format!(
                    "imports {import} but the manifest does not request {}",
                    names.join(" or ")
                ));
            }
        } else if import.starts_with("wasi:") {
            if !WASI_ALLOWED.iter().any(|p| import.starts_with(p)) {
                errors.push(format!(
                    "imports {import}, which plugins may not use (no sockets or direct HTTP)"
                ));
            } else if !import.contains("@0.2.") {
                errors.push(format!("imports {import}: this host offers WASI 0.2"));
            }
        } else {
            errors.push(format!("imports {import}, which this host does not offer"));
        }
    }
    // Exports a plugin built with the SDK always has are fine even when the hook is not
    // declared (it answers not-supported); anything else is not part of the contract.
    for export in &info.exports {
        let known = Hook::ALL
            .iter()
            .any(|h| export.starts_with(&format!("streamflow:plugin/{}@", h.interface())));
        if !known {
            errors.push(format!(
                "exports {export}, which is not part of streamflow:plugin"
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PackageError(errors))
    }
}

/// Top-level imports and exports, and the manifest section if there is one.
fn read_component(bytes: &[u8]) -> Result<(ComponentInfo, Option<Vec<u8>>), PackageError> {
    let mut info = ComponentInfo::default();
    let mut manifest = None;
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload =
            payload.map_err(|e| PackageError::one(format!("not a WebAssembly component: {e}")))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return Err(PackageError::one(
                        "this is a core WebAssembly module, not a component: build for wasm32-wasip2",
                    ));
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import =
                        import.map_err(|e| PackageError::one(format!("import section: {e}")))?;
                    info.imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export =
                        export.map_err(|e| PackageError::one(format!("export section: {e}")))?;
                    info.exports.push(export.name.name.to_string());
                }
            }
            Payload::CustomSection(section) if depth == 1 && section.name() == MANIFEST_SECTION => {
                if manifest.is_some() {
                    return Err(PackageError::one("two manifest sections"));
                }
                if section.data().len() > MAX_MANIFEST_BYTES {
                    return Err(PackageError::one(format!(
                        "manifest larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                manifest = Some(section.data().to_vec());
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(PackageError::one("truncated component"));
    }
    Ok((info, manifest))
}

fn append_custom_section(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut body = Vec::with_capacity(name.len() + data.len() + 5);
    leb128(&mut body, name.len() as u64);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    out.push(0); // custom section id
    leb128(out, body.len() as u64);
    out.extend_from_slice(&body);
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Lowercase hexadecimal of `bytes` (package hashes, and the kernel's digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        Manifest::from_toml(&format!(
            "id = \"t-plugin\"\nname = \"T\"\nversion = \"1.0.0\"\napi = \"0.1.0\"\nhooks = [\"score-lead\"]\n{extra}"
        ))
        .unwrap()
    }

    fn info(imports: &[&str], exports: &[&str]) -> ComponentInfo {
        ComponentInfo {
            imports: imports.iter().map(|s| s.to_string()).collect(),
            exports: exports.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn matching_component_passes() {
        let i = info(
            &[
                "wasi:cli/environment@0.2.3",
                "streamflow:plugin/log@0.1.0",
                "streamflow:plugin/kv@0.1.0",
            ],
            &[
                "streamflow:plugin/scoring@0.1.0",
                "streamflow:plugin/actions@0.1.0",
            ],
        );
        check(&manifest("capabilities = [\"kv\"]"), &i).unwrap();
        assert_eq!(i.world(), "streamflow:plugin/plugin@0.1.0");
    }

    #[test]
    fn mismatches_are_named() {
        let i = info(
            &[
                "streamflow:plugin/kv@0.1.0",
                "wasi:sockets/tcp@0.2.3",
                "evil:host/escape",
            ],
            &["streamflow:plugin/actions@0.1.0"],
        );
        let all = check(&manifest(""), &i).unwrap_err().to_string();
        for needle in [
            "hook score-lead: the component does not export streamflow:plugin/scoring@0.1.0",
            "imports streamflow:plugin/kv@0.1.0 but the manifest does not request kv",
            "imports wasi:sockets/tcp@0.2.3, which plugins may not use",
            "imports evil:host/escape, which this host does not offer",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        let wrong = info(&[], &["streamflow:plugin/scoring@0.2.0"]);
        let all = check(&manifest(""), &wrong).unwrap_err().to_string();
        assert!(
            all.contains("targets streamflow:plugin@0.2.0 but the manifest declares api 0.1.0"),
            "{all}"
        );
    }

    #[test]
    fn core_modules_and_garbage_are_refused() {
        let core_module = b"\0asm\x01\0\0\0";
        let err = Package::parse(core_module.to_vec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("core WebAssembly module"), "{err}");
        let err = Package::parse(b"PK\x03\x04 zip".to_vec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a WebAssembly component"), "{err}");
    }

    #[test]
    fn leb128_encodes() {
        let mut v = Vec::new();
        leb128(&mut v, 624485);
        assert_eq!(v, [0xE5, 0x8E, 0x26]);
    }
}
