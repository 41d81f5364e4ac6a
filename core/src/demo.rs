//! Demo data for `streamflow serve --demo`: a provider, two client businesses with users of
//! several roles, and sample leads. Seeding is idempotent: it fills in what is missing.

use serde_json::json;

use crate::api::AppState;
use crate::auth;
use crate::store::accounts::AccountKind;
use crate::store::writer::RecordWrite;
use crate::tenancy::Role;

/// The password of every demo account. Demo data is for trying the product, never for a
/// server others can reach.
pub const DEMO_PASSWORD: &str = "streamflow-demo";
pub const DEMO_PROVIDER_EMAIL: &str = "provider@demo.streamflow.dev";

struct DemoTenant {
    slug: &'static str,
    name: &'static str,
    leads: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        u32,
        &'static str,
    )],
}

const TENANTS: [DemoTenant; 2] = [
    DemoTenant {
        slug: "acme-hvac",
        name: "Acme Heating & Cooling",
        // name, source, service, stage, budget, postal code
        leads: &[
            (
                "Dana Whitfield",
                "referral",
                "ac_replacement",
                "new",
                9_500,
                "78704",
            ),
            (
                "Marcus Ortega",
                "google_ads",
                "furnace_repair",
                "contacted",
                650,
                "78745",
            ),
            (
                "Priya Natarajan",
                "website",
                "maintenance_plan",
                "qualified",
                300,
                "78731",
            ),
            (
                "Tom Becker",
                "yelp",
                "heat_pump_install",
                "new",
                14_000,
                "78613",
            ),
            (
                "Lena Fischer",
                "referral",
                "duct_cleaning",
                "contacted",
                450,
                "78701",
            ),
        ],
    },
    DemoTenant {
        slug: "summit-roofing",
        name: "Summit Roofing Co.",
        leads: &[
            (
                "Gary Holt",
                "storm_canvass",
                "hail_inspection",
                "new",
                0,
                "80301",
            ),
            (
                "Ana Souza",
                "website",
                "roof_replacement",
                "qualified",
                18_500,
                "80302",
            ),
            (
                "Kevin Park",
                "insurance_referral",
                "insurance_claim",
                "contacted",
                12_000,
                "80027",
            ),
            (
                "Rita Gomez",
                "google_ads",
                "leak_repair",
                "new",
                900,
                "80305",
            ),
        ],
    },
];

const ROLES: [Role; 3] = [Role::Owner, Role::Member, Role::Viewer];

fn user_email(role: Role, slug: &str) -> String {
    format!("{}@{slug}.demo", role.as_str())
}

/// Seeds the demo data and prints how to sign in.
pub async fn seed(state: &AppState) -> anyhow::Result<()> {
    let store = &state.store;
    let hash = auth::hash_password(DEMO_PASSWORD.into()).await?;
    if store.count_accounts(AccountKind::Provider).await? == 0 {
        store
            .create_account(AccountKind::Provider, DEMO_PROVIDER_EMAIL, "", &hash)
            .await?;
    }
    for tenant in &TENANTS {
        let (t, fresh) = match store.create_tenant(tenant.slug, tenant.name).await? {
            Some(t) => (t, true),
            None => (
                store
                    .tenant_by_slug(tenant.slug)
                    .await?
                    .expect("slug is taken, so it exists"),
                false,
            ),
        };
        let scope = t.scope();
        for role in ROLES {
            store
                .create_user(&scope, &user_email(role, tenant.slug), &hash, role.as_str())
                .await?;
        }
        if fresh {
            for (name, source, service, stage, budget, postal) in tenant.leads {
                let first = name.split(' ').next().unwrap_or(name).to_lowercase();
                state
                    .writer
                    .submit(RecordWrite::Create {
                        scope,
                        id: uuid::Uuid::now_v7(),
                        score: None,
                        events: Vec::new(),
                        record_type: "lead".into(),
                        stage: Some(stage.to_string()),
                        data: json!({
                            "name": name,
                            "email": format!("{first}@example.com"),
                            "source": source,
                            "service": service,
                            "budget": budget,
                            "postal_code": postal,
                        }),
                        created_by: None,
                        actor: "system:demo".into(),
                    })
                    .await?;
            }
        }
    }
    let provider = if store
        .account_by_email(AccountKind::Provider, DEMO_PROVIDER_EMAIL)
        .await?
        .is_some()
    {
        format!("{DEMO_PROVIDER_EMAIL} / {DEMO_PASSWORD}")
    } else {
        "your existing provider account".into()
    };
    println!("Demo data is ready (demo accounts share the password {DEMO_PASSWORD:?}):");
    println!("  provider:  {provider}   POST /provider/auth/login");
    for tenant in &TENANTS {
        let users: Vec<String> = ROLES.iter().map(|r| user_email(*r, tenant.slug)).collect();
        println!(
            "  client {:<15} {}   POST /api/auth/login with \"tenant\": \"{}\"",
            tenant.slug,
            users.join(", "),
            tenant.slug
        );
    }
    Ok(())
}
