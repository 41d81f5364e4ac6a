//! Refresh tokens: stored as SHA-256 hashes, rotated on every use, grouped in families so a
//! reused (stolen) token revokes every token descended from the same login.

use uuid::Uuid;

use super::{Store, StoreResult, now_micros, on_pool};

/// Who a refresh token was issued to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshGrant {
    pub family_id: Uuid,
    pub subject_id: Uuid,
    pub tenant_id: Option<Uuid>,
    /// When the login that started this family happened (microseconds); the session ends
    /// a configured time after it, however often it is refreshed.
    pub session_started_at: i64,
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum Rotation {
    /// The token was live; it is now used and `new_hash` replaces it in the same family.
    Rotated(RefreshGrant),
    /// The token had already been used: the whole family is now revoked.
    Reused,
    /// Unknown, expired, revoked, or of another realm.
    Invalid,
}

impl Store {
    pub async fn insert_refresh_token(
        &self,
        realm: &str,
        grant: &RefreshGrant,
        token_hash: &[u8],
        expires_at: i64,
    ) -> StoreResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO refresh_tokens (id, token_hash, family_id, realm, subject_id, tenant_id, expires_at, created_at, session_started_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(Uuid::now_v7())
            .bind(token_hash)
            .bind(grant.family_id)
            .bind(realm)
            .bind(grant.subject_id)
            .bind(grant.tenant_id)
            .bind(expires_at)
            .bind(now_micros())
            .bind(grant.session_started_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Marks the token used and stores its successor, atomically: of two concurrent uses of
    /// one token exactly one rotates and the other is treated as reuse. The successor
    /// expires at `new_expires_at` or when the session reaches `session_max_age`
    /// (microseconds), whichever comes first; a token whose session is over is not rotated.
    pub async fn rotate_refresh_token(
        &self,
        realm: &str,
        token_hash: &[u8],
        new_hash: &[u8],
        new_expires_at: i64,
        session_max_age: i64,
    ) -> StoreResult<Rotation> {
        let now = now_micros();
        let session_ends_at =
            |grant: &RefreshGrant| grant.session_started_at.saturating_add(session_max_age);
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            let claimed = sqlx::query_as::<_, RefreshGrant>(
                "UPDATE refresh_tokens SET used_at = $1 \
                 WHERE token_hash = $2 AND realm = $3 AND used_at IS NULL \
                   AND revoked_at IS NULL AND expires_at > $1 AND session_started_at > $4 \
                 RETURNING family_id, subject_id, tenant_id, session_started_at",
            )
            .bind(now)
            .bind(token_hash)
            .bind(realm)
            .bind(now.saturating_sub(session_max_age))
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = match claimed {
                Some(grant) => {
                    sqlx::query(
                        "INSERT INTO refresh_tokens (id, token_hash, family_id, realm, subject_id, tenant_id, expires_at, created_at, session_started_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(new_hash)
                    .bind(grant.family_id)
                    .bind(realm)
                    .bind(grant.subject_id)
                    .bind(grant.tenant_id)
                    .bind(new_expires_at.min(session_ends_at(&grant)))
                    .bind(now)
                    .bind(grant.session_started_at)
                    .execute(&mut *tx)
                    .await?;
                    Rotation::Rotated(grant)
                }
                None => {
                    let used_family: Option<Uuid> = sqlx::query_scalar(
                        "SELECT family_id FROM refresh_tokens \
                         WHERE token_hash = $1 AND realm = $2 AND used_at IS NOT NULL",
                    )
                    .bind(token_hash)
                    .bind(realm)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match used_family {
                        Some(family) => {
                            sqlx::query(
                                "UPDATE refresh_tokens SET revoked_at = $1 \
                                 WHERE family_id = $2 AND revoked_at IS NULL",
                            )
                            .bind(now)
                            .bind(family)
                            .execute(&mut *tx)
                            .await?;
                            Rotation::Reused
                        }
                        None => Rotation::Invalid,
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Who a refresh token of this realm was issued to, spent or not.
    pub async fn refresh_grant(
        &self,
        realm: &str,
        token_hash: &[u8],
    ) -> StoreResult<Option<RefreshGrant>> {
        on_pool!(self.pool(), pool => Ok(
            sqlx::query_as::<_, RefreshGrant>(
                "SELECT family_id, subject_id, tenant_id, session_started_at FROM refresh_tokens \
                 WHERE token_hash = $1 AND realm = $2",
            )
            .bind(token_hash)
            .bind(realm)
            .fetch_optional(pool)
            .await?
        ))
    }

    /// Logout: revokes the family of this token (an unknown token changes nothing).
    pub async fn revoke_refresh_family(&self, realm: &str, token_hash: &[u8]) -> StoreResult<()> {
        let Some(grant) = self.refresh_grant(realm, token_hash).await? else {
            return Ok(());
        };
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
            )
            .bind(now_micros())
            .bind(grant.family_id)
            .execute(pool)
            .await?;
            Ok(())
        })
    }
}
