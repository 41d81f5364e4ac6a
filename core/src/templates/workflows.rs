//! Each tenant's applied template, cached.

use std::sync::Arc;

use uuid::Uuid;

use super::Template;
use crate::store::cache::ExpiringMap;
use crate::store::{Store, StoreError, StoreResult, TenantScope};

/// Each tenant's applied template (merged spec), cached for a couple of seconds: the
/// pipelines writes are checked against and the automations the dispatcher runs.
#[derive(Default)]
pub struct Workflows {
    specs: ExpiringMap<Uuid, Option<Arc<Template>>>,
}

impl Workflows {
    pub async fn spec(
        &self,
        store: &Store,
        scope: &TenantScope,
    ) -> StoreResult<Option<Arc<Template>>> {
        if let Some(found) = self.specs.get(&scope.tenant_id()) {
            return Ok(found);
        }
        let generation = self.specs.generation();
        let spec = match store.tenant_template(scope).await? {
            None => None,
            // Failing open (no pipelines, no automations) would let writes skip the rules
            // and drop automations silently: an unreadable spec is an error.
            Some(row) => Some(Arc::new(
                serde_json::from_value::<Template>(row.spec.0).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "template spec of tenant {}: {e}",
                        scope.tenant_id()
                    ))
                })?,
            )),
        };
        self.specs
            .insert(scope.tenant_id(), spec.clone(), generation);
        Ok(spec)
    }

    pub fn forget(&self, _scope: &TenantScope) {
        self.specs.clear();
    }
}
