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
    /// Connect plugins to outside services (credentials, OAuth), run their schedules, see
    /// their webhook receipts.
    IntegrationsManage,
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
            UsersManage | ApiKeysManage | SchemasManage | PluginsConfigure | IntegrationsManage => {
                self >= Role::Admin
            }
            PluginsRun => self >= Role::Member,
        }
    }

    /// Whether a user with this role may grant `other` to a user or API key: never above
    /// one's own role, and only owners make owners.
    pub fn may_grant(self, other: Role) -> bool {
        self.allows(Permission::UsersManage) && other <= self
    }

    /// Whether this role may act on a user holding `target` (change their role, status or
    /// password): it must be strictly higher, or be the owner's (an owner may act on any
    /// other user, other owners included). Nobody acts on themselves through this rule (the
    /// routes refuse that before asking), and [`Store::update_user`] refuses to demote or
    /// disable a tenant's last active owner.
    ///
    /// [`Store::update_user`]: crate::store::Store::update_user
    pub fn may_manage_user(self, target: Role) -> bool {
        self.allows(Permission::UsersManage) && (self > target || self == Role::Owner)
    }

    /// Whether this role may revoke an API key made by a user who now holds `creator`:
    /// being that creator, or being allowed to act on them ([`Role::may_manage_user`]).
    /// An API key is never "the creator": it acts with its own role capped by its
    /// creator's, so an admin-role key cannot revoke its admin's or the owner's keys.
    pub fn may_revoke_key(self, is_creator: bool, creator: Role) -> bool {
        self.allows(Permission::ApiKeysManage) && (is_creator || self.may_manage_user(creator))
    }

    /// Whether this role may change records of `record_type`. Field staff update only the
    /// work they do: [`FIELD_RECORD_TYPES`]; members and above update every type.
    pub fn may_update_record_type(self, record_type: &str) -> bool {
        match self {
            Role::Field => FIELD_RECORD_TYPES.contains(&record_type),
            other => other.allows(Permission::RecordsUpdate),
        }
    }
}

/// The record types the `field` role may update: jobs, visits, tasks and time entries
/// (the ids the industry templates use).
pub const FIELD_RECORD_TYPES: [&str; 4] = ["job", "visit", "task", "time_entry"];

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

    /// The whole table: acting on a user needs a strictly higher role or the owner's.
    #[test]
    fn acting_on_users_needs_a_higher_role_or_the_owners() {
        for actor in Role::ALL {
            for target in Role::ALL {
                let expected = match actor {
                    Role::Owner => true,
                    Role::Admin => target < Role::Admin,
                    _ => false,
                };
                assert_eq!(
                    actor.may_manage_user(target),
                    expected,
                    "{actor:?} on {target:?}"
                );
                // Revoking a key follows the same rule for its creator, and a creator with
                // the permission may always revoke their own.
                assert_eq!(
                    actor.may_revoke_key(false, target),
                    expected,
                    "{actor:?} key of {target:?}"
                );
                assert_eq!(actor.may_revoke_key(true, target), actor >= Role::Admin);
            }
        }
        assert!(
            !Role::Admin.may_manage_user(Role::Admin),
            "an admin cannot take over a peer"
        );
        assert!(!Role::Admin.may_manage_user(Role::Owner));
    }

    #[test]
    fn granting_never_exceeds_ones_own_role() {
        for actor in Role::ALL {
            for granted in Role::ALL {
                let expected = actor >= Role::Admin && granted <= actor;
                assert_eq!(
                    actor.may_grant(granted),
                    expected,
                    "{actor:?} grants {granted:?}"
                );
            }
        }
        assert!(
            !Role::Admin.may_grant(Role::Owner),
            "only owners make owners"
        );
    }

    #[test]
    fn field_staff_update_only_field_work() {
        for t in FIELD_RECORD_TYPES {
            assert!(Role::Field.may_update_record_type(t));
        }
        for t in ["lead", "contact", "estimate", "invoice"] {
            assert!(!Role::Field.may_update_record_type(t), "{t}");
            assert!(Role::Member.may_update_record_type(t));
        }
        assert!(!Role::Viewer.may_update_record_type("job"));
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
