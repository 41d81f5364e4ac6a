//! Platform-level accounts (providers and developers) and the realms' signing keys.
//! None of this is tenant-owned.

use uuid::Uuid;

use super::{Store, StoreResult, is_unique_violation, now_micros, on_pool};

/// A provider or developer account as the auth layer needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: i64,
}

/// Which platform account table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountKind {
    Provider,
    Developer,
}

impl Store {
    /// The signing secret of a realm, created on first use. Concurrent first starts (several
    /// nodes) agree on one secret: the insert loses quietly and everyone reads the winner.
    pub async fn realm_secret(&self, realm: &str, fresh: &[u8]) -> StoreResult<Vec<u8>> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO realm_keys (realm, secret, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (realm) DO NOTHING",
            )
            .bind(realm)
            .bind(fresh)
            .bind(now_micros())
            .execute(pool)
            .await?;
            let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM realm_keys WHERE realm = $1")
                .bind(realm)
                .fetch_one(pool)
                .await?;
            Ok(secret)
        })
    }

    pub async fn count_accounts(&self, kind: AccountKind) -> StoreResult<i64> {
        let sql = match kind {
            AccountKind::Provider => "SELECT COUNT(*) FROM provider_accounts",
            AccountKind::Developer => "SELECT COUNT(*) FROM developer_accounts",
        };
        on_pool!(self.pool(), pool => Ok(sqlx::query_scalar(sql).fetch_one(pool).await?))
    }

    /// Creates an account; `Ok(None)` when the email is taken.
    pub async fn create_account(
        &self,
        kind: AccountKind,
        email: &str,
        name: &str,
        password_hash: &str,
    ) -> StoreResult<Option<Account>> {
        let account = Account {
            id: Uuid::now_v7(),
            email: email.to_string(),
            name: name.to_string(),
            password_hash: password_hash.to_string(),
            created_at: now_micros(),
        };
        let result = match kind {
            AccountKind::Provider => on_pool!(self.pool(), pool => {
                sqlx::query(
                    "INSERT INTO provider_accounts (id, email, password_hash, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(account.id)
                .bind(&account.email)
                .bind(&account.password_hash)
                .bind(account.created_at)
                .execute(pool)
                .await
                .map(|_| ())
            }),
            AccountKind::Developer => on_pool!(self.pool(), pool => {
                sqlx::query(
                    "INSERT INTO developer_accounts (id, email, name, password_hash, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(account.id)
                .bind(&account.email)
                .bind(&account.name)
                .bind(&account.password_hash)
                .bind(account.created_at)
                .execute(pool)
                .await
                .map(|_| ())
            }),
        };
        match result {
            Ok(()) => Ok(Some(account)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn account_by_email(
        &self,
        kind: AccountKind,
        email: &str,
    ) -> StoreResult<Option<Account>> {
        let sql = match kind {
            AccountKind::Provider => {
                "SELECT id, email, '' AS name, password_hash, created_at \
                 FROM provider_accounts WHERE email = $1"
            }
            AccountKind::Developer => {
                "SELECT id, email, name, password_hash, created_at \
                 FROM developer_accounts WHERE email = $1"
            }
        };
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, Account>(sql).bind(email).fetch_optional(pool).await?
        ))
    }

    pub async fn account_by_id(&self, kind: AccountKind, id: Uuid) -> StoreResult<Option<Account>> {
        let sql = match kind {
            AccountKind::Provider => {
                "SELECT id, email, '' AS name, password_hash, created_at \
                 FROM provider_accounts WHERE id = $1"
            }
            AccountKind::Developer => {
                "SELECT id, email, name, password_hash, created_at \
                 FROM developer_accounts WHERE id = $1"
            }
        };
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, Account>(sql).bind(id).fetch_optional(pool).await?
        ))
    }

    /// Developer accounts by email, at most `limit`, after the email `after` if given.
    pub async fn list_developers(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Account>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, Account>(
                "SELECT id, email, name, password_hash, created_at \
                 FROM developer_accounts WHERE ($1 IS NULL OR email > $1) ORDER BY email LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        ))
    }
}
