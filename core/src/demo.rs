//! Demo data for `streamflow serve --demo`: a provider and three client businesses (HVAC,
//! roofing, government contracting), each with its industry template, users of several
//! roles, and sample leads, estimates, agreements and employees. The leads are scored as they are
//! created, and the automations they trigger (scheduled jobs, tune-up visits, follow-up
//! tasks) run as soon as the server starts. Seeding is idempotent: it fills in what is
//! missing.

use serde_json::{Value, json};

use crate::auth;
use crate::kernel::{Kernel, NewId, NewRecord, WriteContext};
use crate::store::accounts::AccountKind;
use crate::tenancy::Role;

/// The password of every demo account. Demo data is for trying the product, never for a
/// server others can reach.
pub const DEMO_PASSWORD: &str = "streamflow-demo";
pub const DEMO_PROVIDER_EMAIL: &str = "provider@demo.streamflow.dev";

struct DemoTenant {
    slug: &'static str,
    name: &'static str,
    template: &'static str,
    /// `(record type, stage, data)`, created in order as a person would (checked, scored);
    /// an empty stage for a type without a pipeline.
    records: fn() -> Vec<(&'static str, &'static str, Value)>,
}

const TENANTS: [DemoTenant; 3] = [
    DemoTenant {
        slug: "acme-hvac",
        name: "Acme Heating & Cooling",
        template: "hvac",
        records: || {
            vec![
                (
                    "lead",
                    "new",
                    json!({"name": "Dana Whitfield", "email": "dana@example.com", "phone": "512-555-0141",
                    "address": "4410 Avenue B, Austin TX", "zip": "78751", "source": "referral", "service_type": "replacement",
                    "system_type": "central_ac", "system_age_years": 17, "budget": 9500, "timeline": "this_month"}),
                ),
                (
                    "lead",
                    "new",
                    json!({"name": "Marcus Ortega", "phone": "512-555-0178", "address": "902 Kinney Ave, Austin TX",
                    "zip": "78704", "source": "google_lsa", "service_type": "no_heat", "system_type": "gas_furnace",
                    "vulnerable_occupants": true, "timeline": "emergency"}),
                ),
                (
                    "lead",
                    "contacted",
                    json!({"name": "Priya Natarajan", "email": "priya@example.com", "phone": "512-555-0190",
                    "zip": "78731", "source": "website", "service_type": "maintenance", "budget": 300, "timeline": "this_quarter"}),
                ),
                (
                    "lead",
                    "new",
                    json!({"name": "Tom Becker", "email": "tom@example.com", "zip": "78613", "source": "yelp",
                    "service_type": "installation", "system_type": "heat_pump", "budget": 14000, "timeline": "next_year"}),
                ),
                (
                    "estimate",
                    "won",
                    json!({"customer_name": "Lena Fischer", "address": "77 Rainey St, Austin TX",
                    "job_type": "replacement", "system_type": "heat_pump", "tier": "better", "amount": 12850,
                    "description": "Replace 3-ton split system with a 16 SEER2 heat pump"}),
                ),
                (
                    "agreement",
                    "active",
                    json!({"customer_name": "Priya Natarajan", "address": "3100 Bryker Dr, Austin TX",
                    "plan": "plus", "price": 229, "start_date": "2027-03-15", "end_date": "2028-03-14",
                    "frequency": "semiannual", "visits": 2}),
                ),
                (
                    "employee",
                    "",
                    json!({"name": "Luis Ramirez", "email": "luis@acme-hvac.example", "phone": "512-555-0105",
                    "job_title": "Lead Technician", "department": "Field Service", "status": "active",
                    "hired_on": "2019-05-06", "certifications": ["EPA 608 Universal", "NATE"]}),
                ),
                (
                    "employee",
                    "",
                    json!({"name": "Kim Osei", "email": "kim@acme-hvac.example", "job_title": "Service Technician",
                    "department": "Field Service", "status": "active", "hired_on": "2024-02-12", "skills": ["heat pumps"]}),
                ),
            ]
        },
    },
    DemoTenant {
        slug: "summit-roofing",
        name: "Summit Roofing Co.",
        template: "roofing",
        records: || {
            vec![
                (
                    "lead",
                    "new",
                    json!({"name": "Gary Holt", "phone": "303-555-0110", "address": "18 Pine St, Boulder CO",
                    "zip": "80301", "source": "storm_canvass", "service_type": "storm_damage", "suspected_damage": "hail",
                    "has_insurance": true, "timeline": "asap"}),
                ),
                (
                    "lead",
                    "new",
                    json!({"name": "Ana Souza", "email": "ana@example.com", "phone": "303-555-0122",
                    "address": "240 Maple Ave, Boulder CO", "zip": "80302", "source": "website", "service_type": "replacement",
                    "budget": 18500, "timeline": "this_month"}),
                ),
                (
                    "lead",
                    "new",
                    json!({"name": "Rita Gomez", "email": "rita@example.com", "zip": "80305",
                    "source": "google_ads", "service_type": "leak_repair", "budget": 900, "timeline": "just_browsing"}),
                ),
                (
                    "estimate",
                    "won",
                    json!({"customer_name": "Kevin Park", "address": "9 Canyon Rd, Louisville CO",
                    "job_type": "roof_replacement", "funding": "insurance", "amount": 21400,
                    "description": "Tear off, ice and water shield, 30 squares of architectural shingles"}),
                ),
            ]
        },
    },
    DemoTenant {
        slug: "capitol-federal",
        name: "Capitol Federal Services",
        template: "gov-contracting",
        records: || {
            vec![
                (
                    "lead",
                    "identified",
                    json!({"title": "Network operations support, Fort Meade", "solicitation_number": "W91QV1-27-R-0042",
                    "agency": "Department of the Army", "naics": "541512", "set_aside": "small_business", "notice_type": "solicitation",
                    "estimated_value": 4200000, "response_deadline": "2027-02-12", "place_of_performance": "MD", "source": "sam_gov"}),
                ),
                (
                    "lead",
                    "identified",
                    json!({"title": "Cafeteria renovation, VA medical center", "solicitation_number": "36C24527Q0188",
                    "agency": "Department of Veterans Affairs", "naics": "236220", "set_aside": "sdvosb", "notice_type": "combined",
                    "estimated_value": 850000, "response_deadline": "2027-01-20", "place_of_performance": "PA", "source": "sam_gov"}),
                ),
                (
                    "lead",
                    "identified",
                    json!({"title": "Cloud migration sources sought", "agency": "General Services Administration",
                    "naics": "541511", "set_aside": "none", "notice_type": "sources_sought", "estimated_value": 12000000,
                    "response_deadline": "2027-03-01", "place_of_performance": "DC", "source": "sam_gov"}),
                ),
            ]
        },
    },
];

const ROLES: [Role; 3] = [Role::Owner, Role::Member, Role::Viewer];

fn user_email(role: Role, slug: &str) -> String {
    format!("{}@{slug}.demo", role.as_str())
}

/// Seeds the demo data and prints how to sign in.
pub async fn seed(kernel: &Kernel) -> anyhow::Result<()> {
    let store = &kernel.store;
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
            if let Err(e) = kernel
                .templates()
                .apply_newest(&scope, tenant.template)
                .await
            {
                println!(
                    "  note: the {} template was not applied to {} ({e}); the bundled plugins may be off",
                    tenant.template, tenant.slug
                );
                continue;
            }
            let ctx = WriteContext::direct(scope, "system:demo".into(), None);
            for (record_type, stage, data) in (tenant.records)() {
                let new = NewRecord {
                    id: NewId::Fresh,
                    record_type: record_type.into(),
                    stage: (!stage.is_empty()).then(|| stage.into()),
                    data,
                };
                kernel.records().create(&ctx, new).await.map_err(|e| {
                    anyhow::anyhow!("demo {record_type} for {}: {}", tenant.slug, e.describe())
                })?;
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
