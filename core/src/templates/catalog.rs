//! The templates this server offers: the ones built into the binary (from
//! `industry-templates/`) and any an operator adds in `STREAMFLOW_TEMPLATES_DIR`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::Template;

/// Every version of every template, newest last per id.
#[derive(Default)]
pub struct Catalog {
    by_id: BTreeMap<String, Vec<Arc<Template>>>,
}

impl Catalog {
    /// The built-in templates plus the `*.toml` files of `extra` (if given). A file that
    /// does not parse stops the server with its name and the error.
    pub fn load(extra: Option<&Path>) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::default();
        for (file, text) in crate::bundled::TEMPLATES {
            let template = Template::from_toml(text)
                .map_err(|e| anyhow::anyhow!("built-in template {file}: {e}"))?;
            catalog.add(template, file)?;
        }
        if let Some(dir) = extra {
            let entries = std::fs::read_dir(dir).with_context(|| {
                format!(
                    "cannot read the templates directory {} (STREAMFLOW_TEMPLATES_DIR)",
                    dir.display()
                )
            })?;
            let mut paths: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let template = Template::from_toml(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {e}\nrun `streamflow template lint {}` to check it",
                        path.display(),
                        path.display()
                    )
                })?;
                catalog.add(template, &path.display().to_string())?;
            }
        }
        Ok(catalog)
    }

    fn add(&mut self, template: Template, source: &str) -> anyhow::Result<()> {
        let versions = self.by_id.entry(template.id.clone()).or_default();
        if versions.iter().any(|t| t.version == template.version) {
            bail!(
                "{source}: template {} {} is already defined; give the file a new version",
                template.id,
                template.version
            );
        }
        versions.push(Arc::new(template));
        versions.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(())
    }

    /// The newest version of a template, or the given one.
    pub fn get(&self, id: &str, version: Option<&semver::Version>) -> Option<Arc<Template>> {
        let versions = self.by_id.get(id)?;
        match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|t| &t.version == v).cloned(),
        }
    }

    pub fn versions(&self, id: &str) -> Vec<String> {
        self.by_id
            .get(id)
            .map(|vs| vs.iter().map(|t| t.version.to_string()).collect())
            .unwrap_or_default()
    }

    /// The newest version of each template, by id.
    pub fn latest(&self) -> Vec<Arc<Template>> {
        self.by_id
            .values()
            .filter_map(|v| v.last().cloned())
            .collect()
    }
}
