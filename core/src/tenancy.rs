//! Tenancy: the tenant scope every tenant-owned query takes, and client roles.
//!
//! A [`TenantScope`] can only be made inside this crate's auth layer (after a token or API
//! key was verified and the tenant found active) and by the provider realm for the tenant it
//! names. Storage methods take one first, so a query without a tenant filter does not compile.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Proof that the caller may act inside one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantScope {
    tenant_id: Uuid,
}

impl TenantScope {
    /// Only the auth layer and the provider realm (which owns every tenant) call this.
    pub(crate) fn new(tenant_id: Uuid) -> Self {
        Self { tenant_id }
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }
}

/// A client user's role inside their tenant.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Field,
    Member,
    Manager,
    Admin,
    Owner,
}

/// What a role may do. Checked by handlers; a missing permission is 403.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    RecordsRead,
    RecordsCreate,
    RecordsUpdate,
    RecordsDelete,
    /// Create users, change roles, disable accounts.
    UsersManage,
    ApiKeysManage,
    /// Define record types and their JSON Schemas.
    SchemasManage,
    /// Change the configuration of installed plugins.
    PluginsConfigure,
    /// Run a plugin's actions.
    PluginsRun,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Owner,
        Role::Admin,
        Role::Manager,
        Role::Member,
        Role::Field,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Member => "member",
            Role::Field => "field",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The permission table. Field staff update the jobs they work on but create nothing;
    /// members create and update; managers also delete; admins and owners run the tenant.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match permission {
            RecordsRead => true,
            RecordsUpdate => self >= Role::Field,
            RecordsCreate => self >= Role::Member,
            RecordsDelete => self >= Role::Manager,
            UsersManage | ApiKeysManage | SchemasManage | PluginsConfigure => self >= Role::Admin,
            PluginsRun => self >= Role::Member,
        }
    }

    /// Whether a user with this role may grant `other` to a user or API key: never above
    /// one's own role, and only owners make owners.
    pub fn may_grant(self, other: Role) -> bool {
        self.allows(Permission::UsersManage) && other <= self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_reads_only() {
        assert!(Role::Viewer.allows(Permission::RecordsRead));
        for p in [
            Permission::RecordsCreate,
            Permission::RecordsUpdate,
            Permission::RecordsDelete,
            Permission::UsersManage,
        ] {
            assert!(!Role::Viewer.allows(p), "{p:?}");
        }
    }

    #[test]
    fn member_cannot_manage_users_but_admin_can() {
        assert!(!Role::Member.allows(Permission::UsersManage));
        assert!(Role::Admin.allows(Permission::UsersManage));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(Role::Owner.may_grant(Role::Owner));
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
