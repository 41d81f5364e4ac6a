//! Tenants, their users and their API keys.

use uuid::Uuid;

use super::cache::ExpiringMap;
use super::{Store, StoreResult, TenantScope, is_unique_violation, now_micros, on_pool};

/// Recent credential checks (see [`super::cache`]).
#[derive(Default)]
pub struct CredentialCache {
    principals: ExpiringMap<(Uuid, Uuid), Option<PrincipalState>>,
    api_keys: ExpiringMap<Vec<u8>, Option<(ApiKey, PrincipalState)>>,
}

impl CredentialCache {
    /// Forgets every check: called by each change that can revoke access.
    fn revoke_all(&self) {
        self.principals.clear();
        self.api_keys.clear();
    }
}

/// The record types every tenant has from the start.
pub const BUILTIN_RECORD_TYPES: [(&str, &str); 3] =
    [("lead", "Lead"), ("contact", "Contact"), ("job", "Job")];

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Tenant {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// The scope for acting inside this tenant. Only code that already established the
    /// right to (the provider realm, the login flow) reaches a `Tenant` to call this on.
    pub fn scope(&self) -> TenantScope {
        TenantScope::new(self.id)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a request needs to know about its client principal, read fresh on every request so
/// a suspension, a disabled account or a role change takes effect at once.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PrincipalState {
    pub role: String,
    pub active: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKey {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub role: String,
    pub created_by: Uuid,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// The outcome of [`Store::update_user`].
#[derive(Debug)]
pub enum UserUpdate {
    Updated(User),
    NotFound,
    /// The change would leave the tenant without an active owner; nothing was changed.
    LastOwner,
    /// The user's role is no longer the one the change was checked against; nothing was
    /// changed.
    RoleChanged,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub role: Option<String>,
    pub status: Option<String>,
    pub password_hash: Option<String>,
    /// Apply only while the user still has this role (the one the caller's right to act was
    /// checked against), so a concurrent promotion cannot slip past the check.
    pub checked_role: Option<String>,
}

const USER_COLUMNS: &str =
    "tenant_id, id, email, password_hash, role, status, created_at, updated_at";

impl Store {
    /// Creates a tenant with the built-in record types; `Ok(None)` if the slug is taken.
    pub async fn create_tenant(&self, slug: &str, name: &str) -> StoreResult<Option<Tenant>> {
        let now = now_micros();
        let tenant = Tenant {
            id: Uuid::now_v7(),
            slug: slug.to_string(),
            name: name.to_string(),
            status: "active".into(),
            created_at: now,
            updated_at: now,
        };
        let result: Result<(), sqlx::Error> = on_pool!(self.pool(), pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO tenants (id, slug, name, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant.id)
            .bind(&tenant.slug)
            .bind(&tenant.name)
            .bind(&tenant.status)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for (id, type_name) in BUILTIN_RECORD_TYPES {
                sqlx::query(
                    "INSERT INTO record_types (tenant_id, id, name, schema, version, created_at, updated_at) \
                     VALUES ($1, $2, $3, NULL, 1, $4, $4)",
                )
                .bind(tenant.id)
                .bind(id)
                .bind(type_name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }.await);
        match result {
            Ok(()) => Ok(Some(tenant)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A page of tenants by slug: at most `limit`, after the slug `after` when given.
    pub async fn list_tenants(&self, after: Option<&str>, limit: i64) -> StoreResult<Vec<Tenant>> {
        let sql = format!(
            "SELECT id, slug, name, status, created_at, updated_at FROM tenants {} \
             ORDER BY slug LIMIT $1",
            if after.is_some() {
                "WHERE slug > $2"
            } else {
                ""
            }
        );
        on_pool!(self.pool(), pool => {
            let mut query = sqlx::query_as::<_, Tenant>(sqlx::AssertSqlSafe(sql)).bind(limit);
            if let Some(after) = after {
                query = query.bind(after.to_string());
            }
            Ok(query.fetch_all(pool).await?)
        })
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> StoreResult<Option<Tenant>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, Tenant>(
                "SELECT id, slug, name, status, created_at, updated_at FROM tenants WHERE slug = $1",
            )
            .bind(slug)
            .fetch_optional(pool)
            .await?
        ))
    }

    /// The caller's own tenant.
    pub async fn tenant_by_id(&self, scope: &TenantScope) -> StoreResult<Option<Tenant>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, Tenant>(
                "SELECT id, slug, name, status, created_at, updated_at FROM tenants WHERE id = $1",
            )
            .bind(scope.tenant_id())
            .fetch_optional(pool)
            .await?
        ))
    }

    pub async fn set_tenant_status(&self, slug: &str, status: &str) -> StoreResult<Option<Tenant>> {
        let tenant = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, Tenant>(
                "UPDATE tenants SET status = $1, updated_at = $2 WHERE slug = $3 \
                 RETURNING id, slug, name, status, created_at, updated_at",
            )
            .bind(status)
            .bind(now_micros())
            .bind(slug)
            .fetch_optional(pool)
            .await?
        });
        self.credentials.revoke_all();
        Ok(tenant)
    }

    /// Creates a user; `Ok(None)` when the email is taken in this tenant.
    pub async fn create_user(
        &self,
        scope: &TenantScope,
        email: &str,
        password_hash: &str,
        role: &str,
    ) -> StoreResult<Option<User>> {
        let now = now_micros();
        let user = User {
            tenant_id: scope.tenant_id(),
            id: Uuid::now_v7(),
            email: email.to_string(),
            password_hash: password_hash.to_string(),
            role: role.to_string(),
            status: "active".into(),
            created_at: now,
            updated_at: now,
        };
        let result = on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO users (tenant_id, id, email, password_hash, role, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(user.tenant_id)
            .bind(user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(&user.role)
            .bind(&user.status)
            .bind(now)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match result {
            Ok(()) => Ok(Some(user)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A page of the tenant's users in creation order: at most `limit`, after the user
    /// `after` when given.
    pub async fn list_users(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 {} ORDER BY id LIMIT $2",
            if after.is_some() { "AND id > $3" } else { "" }
        );
        on_pool!(self.pool(), pool => {
            let mut query = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(sql))
                .bind(scope.tenant_id())
                .bind(limit);
            if let Some(after) = after {
                query = query.bind(after);
            }
            Ok(query.fetch_all(pool).await?)
        })
    }

    pub async fn user_by_id(&self, scope: &TenantScope, id: Uuid) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2");
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(sql))
                .bind(scope.tenant_id())
                .bind(id)
                .fetch_optional(pool)
                .await?
        ))
    }

    /// The user a login names, if the tenant exists.
    pub async fn user_by_email(
        &self,
        scope: &TenantScope,
        email: &str,
    ) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND email = $2");
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(sql))
                .bind(scope.tenant_id())
                .bind(email)
                .fetch_optional(pool)
                .await?
        ))
    }

    /// Changes a user. A new password or a new status also signs the user out everywhere
    /// (every refresh token is revoked), so a reset locks out whoever stole a session.
    ///
    /// A tenant always keeps an active owner: demoting or disabling its last one is
    /// refused ([`UserUpdate::LastOwner`]). Changes of role or status first lock the
    /// tenant's row, so two owners demoting each other at once cannot both succeed.
    pub async fn update_user(
        &self,
        scope: &TenantScope,
        id: Uuid,
        changes: UserChanges,
    ) -> StoreResult<UserUpdate> {
        let sql = format!(
            "UPDATE users SET role = COALESCE($1, role), status = COALESCE($2, status), \
             password_hash = COALESCE($3, password_hash), updated_at = $4 \
             WHERE tenant_id = $5 AND id = $6 AND ($7 IS NULL OR role = $7) RETURNING {USER_COLUMNS}"
        );
        let sign_out = changes.status.is_some() || changes.password_hash.is_some();
        let may_remove_owner = changes.role.as_deref().is_some_and(|r| r != "owner")
            || changes.status.as_deref().is_some_and(|s| s != "active");
        let now = now_micros();
        let outcome = on_pool!(self.pool(), pool => async {
            let mut tx = pool.begin().await?;
            if may_remove_owner {
                // A write to the tenant's row serializes concurrent role and status changes
                // in this tenant (a row lock on PostgreSQL, the write lock on SQLite); the
                // count below then sees every change committed before it.
                sqlx::query("UPDATE tenants SET updated_at = updated_at WHERE id = $1")
                    .bind(scope.tenant_id())
                    .execute(&mut *tx)
                    .await?;
                let other_owners: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND id <> $2 \
                     AND role = 'owner' AND status = 'active'",
                )
                .bind(scope.tenant_id())
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let target_is_owner: Option<bool> = sqlx::query_scalar(
                    "SELECT role = 'owner' AND status = 'active' FROM users \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(scope.tenant_id())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if target_is_owner == Some(true) && other_owners == 0 {
                    return Ok::<_, sqlx::Error>(UserUpdate::LastOwner);
                }
            }
            let user = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(sql))
                .bind(changes.role)
                .bind(changes.status)
                .bind(changes.password_hash)
                .bind(now)
                .bind(scope.tenant_id())
                .bind(id)
                .bind(changes.checked_role.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if user.is_none() && changes.checked_role.is_some() {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM users WHERE tenant_id = $1 AND id = $2")
                        .bind(scope.tenant_id())
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_some() {
                    return Ok(UserUpdate::RoleChanged);
                }
            }
            if sign_out && user.is_some() {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 \
                     WHERE realm = 'client' AND tenant_id = $2 AND subject_id = $3 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(scope.tenant_id())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(match user {
                Some(user) => UserUpdate::Updated(user),
                None => UserUpdate::NotFound,
            })
        }.await)?;
        self.credentials.revoke_all();
        Ok(outcome)
    }

    /// A user's current role and whether both the user and its tenant are active (cached
    /// for at most [`super::cache::CREDENTIAL_CACHE_TTL`]).
    pub async fn user_principal(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<PrincipalState>> {
        let key = (tenant_id, user_id);
        if let Some(hit) = self.credentials.principals.get(&key) {
            return Ok(hit);
        }
        let generation = self.credentials.principals.generation();
        let found = self.read_user_principal(tenant_id, user_id).await?;
        self.credentials
            .principals
            .insert(key, found.clone(), generation);
        Ok(found)
    }

    async fn read_user_principal(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<PrincipalState>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, PrincipalState>(
                "SELECT u.role AS role, (u.status = 'active' AND t.status = 'active') AS active \
                 FROM users u JOIN tenants t ON t.id = u.tenant_id \
                 WHERE u.tenant_id = $1 AND u.id = $2",
            )
            .bind(tenant_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await?
        ))
    }

    pub async fn create_api_key(
        &self,
        scope: &TenantScope,
        name: &str,
        prefix: &str,
        key_hash: &[u8],
        role: &str,
        created_by: Uuid,
    ) -> StoreResult<ApiKey> {
        let key = ApiKey {
            tenant_id: scope.tenant_id(),
            id: Uuid::now_v7(),
            name: name.to_string(),
            prefix: prefix.to_string(),
            role: role.to_string(),
            created_by,
            created_at: now_micros(),
            revoked_at: None,
        };
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO api_keys (tenant_id, id, name, prefix, key_hash, role, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(key.tenant_id)
            .bind(key.id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(key_hash)
            .bind(&key.role)
            .bind(key.created_by)
            .bind(key.created_at)
            .execute(pool)
            .await?;
        });
        Ok(key)
    }

    /// A page of the tenant's API keys in creation order: at most `limit`, after the key
    /// `after` when given.
    pub async fn list_api_keys(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<ApiKey>> {
        let sql = format!(
            "SELECT tenant_id, id, name, prefix, role, created_by, created_at, revoked_at \
             FROM api_keys WHERE tenant_id = $1 {} ORDER BY id LIMIT $2",
            if after.is_some() { "AND id > $3" } else { "" }
        );
        on_pool!(self.pool(), pool => {
            let mut query = sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(sql))
                .bind(scope.tenant_id())
                .bind(limit);
            if let Some(after) = after {
                query = query.bind(after);
            }
            Ok(query.fetch_all(pool).await?)
        })
    }

    /// A live key of this tenant with its creator's current role (`None` for the role when
    /// the creator no longer exists).
    pub async fn live_api_key(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<(ApiKey, Option<String>)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            key: ApiKey,
            creator_role: Option<String>,
        }
        let row = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, Row>(
                "SELECT k.tenant_id, k.id, k.name, k.prefix, k.role, k.created_by, \
                        k.created_at, k.revoked_at, c.role AS creator_role \
                 FROM api_keys k LEFT JOIN users c ON c.tenant_id = k.tenant_id AND c.id = k.created_by \
                 WHERE k.tenant_id = $1 AND k.id = $2 AND k.revoked_at IS NULL",
            )
            .bind(scope.tenant_id())
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|r| (r.key, r.creator_role)))
    }

    /// Revokes a key; false when this tenant has no such (unrevoked) key.
    pub async fn revoke_api_key(&self, scope: &TenantScope, id: Uuid) -> StoreResult<bool> {
        let revoked = on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $1 \
                 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
            )
            .bind(now_micros())
            .bind(scope.tenant_id())
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected() == 1
        });
        self.credentials.revoke_all();
        Ok(revoked)
    }

    /// The live key with this hash and whether its tenant is active (cached like
    /// [`Store::user_principal`]).
    pub async fn api_key_by_hash(
        &self,
        key_hash: &[u8],
    ) -> StoreResult<Option<(ApiKey, PrincipalState)>> {
        if let Some(hit) = self.credentials.api_keys.get(&key_hash.to_vec()) {
            return Ok(hit);
        }
        let generation = self.credentials.api_keys.generation();
        let found = self.read_api_key(key_hash).await?;
        self.credentials
            .api_keys
            .insert(key_hash.to_vec(), found.clone(), generation);
        Ok(found)
    }

    /// A live key, with its creator's current role and whether the tenant and the creator
    /// are both active: a key never outlives or outranks the person who made it.
    async fn read_api_key(&self, key_hash: &[u8]) -> StoreResult<Option<(ApiKey, PrincipalState)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            key: ApiKey,
            creator_role: String,
            creator_active: bool,
        }
        let row = on_pool!(self.pool(), pool => {
            sqlx::query_as::<_, Row>(
                "SELECT k.tenant_id, k.id, k.name, k.prefix, k.role, k.created_by, \
                        k.created_at, k.revoked_at, c.role AS creator_role, \
                        (t.status = 'active' AND c.status = 'active') AS creator_active \
                 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
                 JOIN users c ON c.tenant_id = k.tenant_id AND c.id = k.created_by \
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            )
            .bind(key_hash)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|r| {
            let creator = PrincipalState {
                role: r.creator_role,
                active: r.creator_active,
            };
            (r.key, creator)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A change checked against the role a user had is not applied once that role changed
    /// (a promotion racing the check), and nothing is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_checked_against_a_stale_role_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let tenant = store.create_tenant("acme", "Acme").await.unwrap().unwrap();
        let scope = tenant.scope();
        let user = store
            .create_user(&scope, "m@acme.test", "hash", "member")
            .await
            .unwrap()
            .unwrap();
        // Promoted after the caller checked it as a member...
        let promote = UserChanges {
            role: Some("admin".into()),
            ..UserChanges::default()
        };
        assert!(matches!(
            store.update_user(&scope, user.id, promote).await.unwrap(),
            UserUpdate::Updated(_)
        ));
        // ...so a password reset checked against `member` is refused and changes nothing.
        let reset = UserChanges {
            password_hash: Some("new-hash".into()),
            checked_role: Some("member".into()),
            ..UserChanges::default()
        };
        assert!(matches!(
            store.update_user(&scope, user.id, reset).await.unwrap(),
            UserUpdate::RoleChanged
        ));
        let stored = store.user_by_id(&scope, user.id).await.unwrap().unwrap();
        assert_eq!(stored.password_hash, "hash");
        let current = UserChanges {
            password_hash: Some("new-hash".into()),
            checked_role: Some("admin".into()),
            ..UserChanges::default()
        };
        assert!(matches!(
            store.update_user(&scope, user.id, current).await.unwrap(),
            UserUpdate::Updated(_)
        ));
    }
}
