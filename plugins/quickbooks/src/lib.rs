//! QuickBooks Online for StreamFlow: a job that reaches the configured stage (or the
//! `create-invoice` action) becomes one QuickBooks invoice, for a customer found by the
//! stored mapping, then by name, or created; payments recorded in QuickBooks come back
//! through Intuit's webhooks and set the job's balance and payment status.
//!
//! Exactly one invoice per job, however often the work is retried: the job's
//! `data.quickbooks.invoice_id` is looked at first, and the create carries a `requestid`
//! derived from the job, so a repeat of a create whose answer was lost (a killed server, a
//! timeout, an event delivered twice) is answered with the first invoice instead of making
//! a second one.
//!
//! The plugin never sees a token: every call goes through the host's `quickbooks`
//! connection, which adds and refreshes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use streamflow_plugin_sdk::text::{clip, digest};
use streamflow_plugin_sdk::{
    Error, Event, HostError, HttpRequest, HttpResponse, Plugin, ScheduleTick, events, host_message,
    kv, limits, log, records,
};

mod qbo;
pub mod webhook;

use qbo::{Company, QboError, id_of, quote, sync_token};

/// Invoices a webhook refresh could not reach within one call's quota, refreshed by the
/// `catch-up` schedule (most kept).
const PENDING: &str = "pending-invoices";
const MAX_PENDING: usize = 1000;

#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    service_item: String,
    item_map: BTreeMap<String, String>,
    terms_days: i64,
    amount_field: String,
    customer_field: String,
    line_items_field: String,
    invoiced_stage: Option<String>,
    paid_stage: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            service_item: "Services".into(),
            item_map: BTreeMap::new(),
            terms_days: 30,
            amount_field: "amount".into(),
            customer_field: "customer_name".into(),
            line_items_field: "line_items".into(),
            invoiced_stage: None,
            paid_stage: None,
        }
    }
}

fn settings() -> Result<Settings, Error> {
    streamflow_plugin_sdk::config::get()
}

pub struct QuickBooks;

impl Plugin for QuickBooks {
    fn on_event(event: Event) -> Result<(), Error> {
        // The manifest's filter lets through moves into an invoicing stage; of those, only
        // jobs are invoiced.
        if event.record_type.as_deref() != Some("job") {
            return Ok(());
        }
        let Some(job_id) = event.record_id.as_deref() else {
            return Ok(());
        };
        invoice_job(job_id, &settings()?).map(|_| ())
    }

    fn run_action(name: &str, input: Value) -> Result<Value, Error> {
        let job_id = input
            .get("job_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::InvalidInput("give the job as {\"job_id\": \"...\"}".into()))?;
        let settings = settings()?;
        match name {
            "create-invoice" => invoice_job(job_id, &settings),
            "update-invoice" => update_invoice(job_id, &settings),
            "refresh-invoice" => {
                let job = job(job_id)?;
                let invoice_id = invoice_of(&job.json()?).ok_or_else(|| {
                    Error::InvalidInput(format!("job {job_id} has no QuickBooks invoice yet"))
                })?;
                let company = qbo::company()?;
                let invoice = company.read("Invoice", &invoice_id)?;
                apply_invoice(job_id, &invoice, false, &settings)?;
                Ok(json!({"quickbooks": job_quickbooks(job_id)?}))
            }
            other => Err(Error::InvalidInput(format!(
                "no action {:?}; this plugin has create-invoice, update-invoice and refresh-invoice",
                clip(other, 64)
            ))),
        }
    }

    fn handle_webhook(request: HttpRequest) -> Result<HttpResponse, Error> {
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|_| Error::InvalidInput("the delivery is not JSON".into()))?;
        let settings = settings()?;
        let company = qbo::company()?;
        let mut invoices = BTreeSet::new();
        let mut voided = BTreeSet::new();
        for change in webhook::changes(&body) {
            if change.entity == "Invoice" && change.operation == "Void" {
                voided.insert(change.id.clone());
            }
            match (change.entity.as_str(), change.operation.as_str()) {
                ("Invoice", _) => {
                    invoices.insert(change.id);
                }
                // A payment names the invoices it pays; a deleted one is gone, and QuickBooks
                // reports the invoices it changed on their own.
                ("Payment", op) if op != "Delete" => match company.read("Payment", &change.id) {
                    Ok(payment) => invoices.extend(paid_invoices(&payment)),
                    Err(e) if e.is_fault("610") => {}
                    Err(e) => return Err(e.into()),
                },
                _ => {}
            }
        }
        let (updated, deferred) = refresh_invoices(&company, invoices, &voided, &settings)?;
        let later = deferred.len();
        defer(deferred, &[])?;
        Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"updated": updated, "deferred": later})
                .to_string()
                .into_bytes(),
        })
    }

    fn on_schedule(_tick: ScheduleTick) -> Result<(), Error> {
        let pending: Vec<String> = kv::get_json(PENDING)?.unwrap_or_default();
        if pending.is_empty() {
            return Ok(());
        }
        let company = qbo::company()?;
        // The list stays as it is until the refreshes are done: a run cut short loses none.
        let (_, deferred) = refresh_invoices(
            &company,
            pending.iter().cloned().collect(),
            &BTreeSet::new(),
            &settings()?,
        )?;
        defer(deferred, &pending)
    }
}

streamflow_plugin_sdk::export!(QuickBooks);

/// Reads each invoice this plugin made and updates its job. Returns how many it updated,
/// and those it could not read within this call's request quota (or for now: QuickBooks
/// throttled or failed), for the `catch-up` schedule.
fn refresh_invoices(
    company: &Company,
    invoices: BTreeSet<String>,
    voided: &BTreeSet<String>,
    settings: &Settings,
) -> Result<(usize, Vec<String>), Error> {
    let mut updated = 0;
    let mut deferred = Vec::new();
    for invoice_id in invoices {
        // The open invoices this plugin made are mapped to their jobs in kv; a closed one
        // (paid, voided) is found by the job its note names.
        let mapping = format!("invoice:{invoice_id}");
        let mapped = kv::get(&mapping)?.and_then(|v| String::from_utf8(v).ok());
        if limits::remaining().http_requests < 2 {
            deferred.push(invoice_id);
            continue;
        }
        match company.read("Invoice", &invoice_id) {
            Ok(invoice) => {
                let job_id = match mapped {
                    Some(job_id) => job_id,
                    None => match job_in_note(&invoice, &invoice_id)? {
                        Some(job_id) => job_id,
                        // Not an invoice this plugin made for a job.
                        None => continue,
                    },
                };
                let is_voided = voided.contains(&invoice_id);
                match apply_invoice(&job_id, &invoice, is_voided, settings) {
                    Ok(true) => updated += 1,
                    Ok(false) => {}
                    // The job is gone (deleted in StreamFlow): nothing to update, and the
                    // others still are.
                    Err(Error::InvalidInput(m)) => {
                        log::warn(&format!("invoice {invoice_id}: {m}"));
                        forget(&mapping);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                let view = invoice_view(&invoice);
                if is_voided || view["payment_status"] == "paid" {
                    // Closed: nothing is expected of it (a later change still finds the
                    // job by the note), and kv keeps only open invoices.
                    forget(&mapping);
                }
            }
            Err(e) if e.is_fault("610") => {
                log::warn(&format!("QuickBooks invoice {invoice_id} no longer exists"));
                forget(&mapping);
            }
            Err(QboError::Transient(_)) => deferred.push(invoice_id),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((updated, deferred))
}

/// The job an invoice's note names (`StreamFlow job <id>`, as this plugin writes it), if that
/// job's own invoice is this one: anyone can edit a note, so the job must agree.
fn job_in_note(invoice: &Value, invoice_id: &str) -> Result<Option<String>, Error> {
    let Some(job_id) = invoice
        .get("PrivateNote")
        .and_then(Value::as_str)
        .and_then(|n| n.split("StreamFlow job ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|id| id.len() == 36)
    else {
        return Ok(None);
    };
    let Some(job) = records::get("job", job_id)? else {
        return Ok(None);
    };
    let own = invoice_of(&job.json()?);
    Ok((own.as_deref() == Some(invoice_id)).then(|| job_id.to_string()))
}

/// Sets a cache entry; a cache that cannot grow (the kv quota) is only slower, never wrong.
fn remember(key: &str, value: &str) {
    if let Err(e) = kv::set(key, value.as_bytes()) {
        log::warn(&format!("kv entry {key} not kept: {}", host_message(&e)));
    }
}

fn forget(key: &str) {
    if let Err(e) = kv::delete(key) {
        log::warn(&format!("kv entry {key} not removed: {}", host_message(&e)));
    }
}

/// Keeps `ids` for the `catch-up` schedule and forgets `done` (the newest kept).
fn defer(ids: Vec<String>, done: &[String]) -> Result<(), Error> {
    let mut pending: Vec<String> = kv::get_json(PENDING)?.unwrap_or_default();
    let before = pending.len();
    pending.retain(|p| !done.contains(p));
    let count = ids.len();
    for id in ids {
        if !pending.contains(&id) {
            pending.push(id);
        }
    }
    if pending.len() == before && done.is_empty() {
        return Ok(());
    }
    let skip = pending.len().saturating_sub(MAX_PENDING);
    if pending.is_empty() {
        kv::delete(PENDING)?;
    } else {
        kv::set_json(PENDING, &pending[skip..].to_vec())?;
    }
    if count > 0 {
        log::info(&format!(
            "{count} invoice refreshes left for the catch-up schedule"
        ));
    }
    Ok(())
}

fn job(job_id: &str) -> Result<streamflow_plugin_sdk::Record, Error> {
    records::get("job", job_id)?.ok_or_else(|| Error::InvalidInput(format!("no job {job_id}")))
}

fn invoice_of(data: &Value) -> Option<String> {
    data.pointer("/quickbooks/invoice_id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn job_quickbooks(job_id: &str) -> Result<Value, Error> {
    Ok(job(job_id)?
        .json()?
        .get("quickbooks")
        .cloned()
        .unwrap_or(Value::Null))
}

/// Invoices a job once: its stored invoice if it has one, else a new one (idempotent by
/// `requestid`). Returns the job's `data.quickbooks`.
fn invoice_job(job_id: &str, settings: &Settings) -> Result<Value, Error> {
    let job = job(job_id)?;
    let data = job.json()?;
    if invoice_of(&data).is_some() {
        return Ok(data["quickbooks"].clone());
    }
    let company = qbo::company()?;
    // QuickBooks answers a repeated requestid with its first answer, a refusal included:
    // after a refusal (the admin fixes the job, then retries) the requests need new ids.
    // Kept on the job (state, not a cache: it must survive a full kv).
    let attempt = data
        .pointer("/quickbooks/attempt")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let customer_id = customer_for(&company, job_id, attempt, &data, settings)?;
    let lines = lines_for(&company, &data, settings)?;
    let txn_date = job_date(&data, job.updated_at);
    let due_date = txn_date.saturating_add(time::Duration::days(settings.terms_days));
    let body = json!({
        "CustomerRef": {"value": customer_id},
        "Line": lines,
        "TxnDate": iso_date(txn_date),
        "DueDate": iso_date(due_date),
        "PrivateNote": format!("StreamFlow job {job_id}"),
    });
    // `sf-inv-` and a UUID and the attempt: at most 50 characters, as QuickBooks requires.
    let invoice = match company.write(
        "Invoice",
        &body,
        Some(&format!("sf-inv-{job_id}-{attempt}")),
    ) {
        Ok(invoice) => invoice,
        Err(e) => return Err(refused(job_id, attempt, e, &data, settings)),
    };
    let invoice_id =
        id_of(&invoice).ok_or_else(|| Error::Failed("QuickBooks' invoice has no Id".into()))?;
    remember(&format!("invoice:{invoice_id}"), job_id);
    let mut view = invoice_view(&invoice);
    view.insert("refused".into(), Value::Null);
    view.insert("realm_id".into(), json!(company.realm));
    view.insert("customer_id".into(), json!(customer_id));
    let view = Value::Object(view);
    write_back(job_id, &view, settings.invoiced_stage.as_deref())?;
    emit(
        "invoice.created",
        json!({"job_id": job_id, "invoice_id": invoice_id, "doc_number": view["doc_number"],
               "total": view["total"], "balance": view["balance"]}),
    );
    Ok(view)
}

/// Sends the job's current lines to its invoice (a sparse update). A stale SyncToken
/// (someone changed the invoice in QuickBooks) re-reads it and tries once more.
fn update_invoice(job_id: &str, settings: &Settings) -> Result<Value, Error> {
    let job = job(job_id)?;
    let data = job.json()?;
    let invoice_id = invoice_of(&data).ok_or_else(|| {
        Error::InvalidInput(format!(
            "job {job_id} has no QuickBooks invoice yet; create it first"
        ))
    })?;
    let company = qbo::company()?;
    let lines = lines_for(&company, &data, settings)?;
    let known = json!({
        "Id": invoice_id,
        "SyncToken": data
            .pointer("/quickbooks/sync_token")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string(),
    });
    let mut fields = Map::new();
    fields.insert("Line".into(), Value::Array(lines));
    let invoice = sparse_update(&company, "Invoice", &known, fields)?;
    apply_invoice(job_id, &invoice, false, settings)?;
    job_quickbooks(job_id)
}

/// A sparse update of `fields` on an entity known at `current` (its Id and SyncToken). A
/// stale SyncToken (5010: someone changed it in QuickBooks since) re-reads the entity and
/// tries once more with the fresh token.
fn sparse_update(
    company: &Company,
    entity: &str,
    current: &Value,
    fields: Map<String, Value>,
) -> Result<Value, Error> {
    let id = id_of(current).ok_or_else(|| Error::Failed(format!("the {entity} has no Id")))?;
    let mut token = sync_token(current).unwrap_or(0);
    for attempt in 0..2 {
        let mut body = fields.clone();
        body.insert("Id".into(), json!(id));
        body.insert("SyncToken".into(), json!(token.to_string()));
        body.insert("sparse".into(), json!(true));
        match company.write(entity, &Value::Object(body), None) {
            Ok(updated) => return Ok(updated),
            Err(e) if e.is_fault("5010") && attempt == 0 => {
                let fresh = company.read(entity, &id)?;
                token = sync_token(&fresh).unwrap_or(token);
                log::info(&format!(
                    "{entity} {id} changed in QuickBooks since it was read; retrying at SyncToken {token}"
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Failed(format!(
        "{entity} {id} kept changing in QuickBooks while it was updated; try again"
    )))
}

/// The invoice's figures as the job keeps them.
fn invoice_view(invoice: &Value) -> Map<String, Value> {
    let number = |k: &str| invoice.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (total, balance) = (number("TotalAmt"), number("Balance"));
    let mut view = Map::new();
    view.insert("invoice_id".into(), json!(id_of(invoice)));
    view.insert(
        "doc_number".into(),
        invoice.get("DocNumber").cloned().unwrap_or(Value::Null),
    );
    view.insert("total".into(), json!(total));
    view.insert("balance".into(), json!(balance));
    view.insert(
        "payment_status".into(),
        json!(payment_status(total, balance)),
    );
    view.insert("sync_token".into(), json!(sync_token(invoice).unwrap_or(0)));
    if let Some(due) = invoice.get("DueDate") {
        view.insert("due_date".into(), due.clone());
    }
    if let Some(at) = invoice.pointer("/MetaData/LastUpdatedTime") {
        view.insert("updated_at".into(), at.clone());
    }
    view
}

pub fn payment_status(total: f64, balance: f64) -> &'static str {
    if balance <= 0.005 {
        "paid"
    } else if balance + 0.005 < total {
        "partial"
    } else {
        "unpaid"
    }
}

/// The ids of the invoices a payment's lines are linked to.
pub fn paid_invoices(payment: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for line in payment
        .get("Line")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for linked in line
            .get("LinkedTxn")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if linked.get("TxnType").and_then(Value::as_str) == Some("Invoice")
                && let Some(id) = linked.get("TxnId").and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
    }
    out
}

/// Writes a newer state of the job's invoice onto the job; an older or the same state (a
/// duplicate or out-of-order delivery) changes nothing. Returns whether it wrote.
fn apply_invoice(
    job_id: &str,
    invoice: &Value,
    voided: bool,
    settings: &Settings,
) -> Result<bool, Error> {
    let job = job(job_id)?;
    let data = job.json()?;
    // The job's own invoice only (a mapping or note that names another changes nothing).
    if invoice_of(&data).is_some_and(|own| Some(own) != id_of(invoice)) {
        return Ok(false);
    }
    let view = invoice_view(invoice);
    if let Some(stored) = data.get("quickbooks")
        && !is_newer(&view, stored)
    {
        return Ok(false);
    }
    let status = data
        .pointer("/quickbooks/payment_status")
        .and_then(Value::as_str);
    let was_paid = status == Some("paid");
    let mut view = view;
    // A voided invoice keeps its lines at zero: it is not paid. Told by the delivery that
    // voided it, and kept while the invoice stays at zero.
    let zero = view["total"].as_f64() == Some(0.0);
    if voided || (status == Some("voided") && zero) {
        view.insert("payment_status".into(), json!("voided"));
    }
    let view = Value::Object(view);
    let paid = view["payment_status"] == "paid";
    let stage = if paid {
        settings.paid_stage.as_deref()
    } else {
        None
    };
    let wrote = write_back(job_id, &view, stage)?;
    if wrote && paid && !was_paid {
        emit(
            "invoice.paid",
            json!({"job_id": job_id, "invoice_id": view["invoice_id"], "total": view["total"]}),
        );
    }
    Ok(wrote)
}

/// Merges `view` into the job's `data.quickbooks` (moving it to `stage` when given and
/// allowed), re-reading on a concurrent change. A view no newer than the stored one (by the
/// invoice's SyncToken: a late or concurrent delivery wrote a newer state first) only adds
/// what is missing. Returns whether the view's figures were written.
fn write_back(job_id: &str, view: &Value, stage: Option<&str>) -> Result<bool, Error> {
    let mut stage = stage;
    for _ in 0..4 {
        let job = job(job_id)?;
        let mut data = job.json()?;
        let Some(object) = data.as_object_mut() else {
            return Err(Error::Failed(format!(
                "job {job_id}'s data is not an object"
            )));
        };
        let entry = object
            .entry("quickbooks")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let newer = is_newer(view.as_object().unwrap_or(&Map::new()), entry);
        let mut added = false;
        if let (Some(into), Some(from)) = (entry.as_object_mut(), view.as_object()) {
            for (k, v) in from {
                if newer || !into.contains_key(k) {
                    into.insert(k.clone(), v.clone());
                    added = true;
                }
            }
        }
        if !added {
            return Ok(false);
        }
        let to = stage
            .filter(|_| newer)
            .filter(|s| job.stage.as_deref() != Some(*s));
        match records::update("job", job_id, to, &data, Some(job.version)) {
            Ok(_) => return Ok(newer),
            Err(HostError::Conflict(_)) => continue,
            Err(HostError::Invalid(m)) if to.is_some() => {
                // The pipeline refuses the move (a required field, no such stage): the
                // figures matter more than the stage.
                log::warn(&format!(
                    "job {job_id} kept its stage: the move to {:?} was refused ({})",
                    to.unwrap_or_default(),
                    clip(&m, 300)
                ));
                stage = None;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::RetryLater(format!(
        "job {job_id} kept changing while its QuickBooks figures were written"
    )))
}

/// Whether `view` is a newer state of the invoice than `stored` (the job's
/// `data.quickbooks`): a higher SyncToken, or the same one changed later (should QuickBooks
/// apply a payment without moving the SyncToken), or nothing stored yet.
fn is_newer(view: &Map<String, Value>, stored: &Value) -> bool {
    let token = |v: Option<&Value>| v.and_then(Value::as_u64);
    let Some(old) = token(stored.get("sync_token")) else {
        return true;
    };
    let new = token(view.get("sync_token")).unwrap_or(0);
    let at = |v: Option<&Value>| {
        v.and_then(Value::as_str).and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    new > old
        || (new == old
            && matches!(
                (at(view.get("updated_at")), at(stored.get("updated_at"))),
                (Some(a), Some(b)) if a > b
            ))
}

fn emit(kind: &str, payload: Value) {
    if let Err(e) = events::emit(kind, &payload) {
        log::warn(&format!("could not emit {kind}: {}", host_message(&e)));
    }
}

fn text_field<'a>(data: &'a Value, field: &str) -> Option<&'a str> {
    data.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The job's QuickBooks customer: the stored mapping, else one with the same DisplayName,
/// else a new one. A duplicate-name fault (6240: the name is taken, maybe by an inactive
/// customer) looks again, inactive ones included, and reuses what it finds.
fn customer_for(
    company: &Company,
    job_id: &str,
    attempt: u32,
    data: &Value,
    settings: &Settings,
) -> Result<String, Error> {
    let name = text_field(data, &settings.customer_field).ok_or_else(|| {
        Error::InvalidInput(format!(
            "the job has no customer name in {:?} (with records:read-pii granted, the plugin sees it)",
            settings.customer_field
        ))
    })?;
    let name: String = name.chars().take(100).collect();
    let key = format!("customer:{}", digest(&name.to_lowercase()));
    if let Some(id) = kv::get(&key)?.and_then(|v| String::from_utf8(v).ok()) {
        return Ok(id);
    }
    let by_name = format!("DisplayName = {}", quote(&name));
    let found = company.query("Customer", &by_name)?;
    let id = match found.first().and_then(id_of) {
        Some(id) => id,
        None => {
            let mut body = json!({"DisplayName": name});
            if let Some(phone) = text_field(data, "customer_phone").or(text_field(data, "phone")) {
                body["PrimaryPhone"] = json!({"FreeFormNumber": clip(phone, 30)});
            }
            if let Some(email) = text_field(data, "customer_email").or(text_field(data, "email")) {
                body["PrimaryEmailAddr"] = json!({"Address": clip(email, 100)});
            }
            if let Some(address) = text_field(data, "address") {
                body["BillAddr"] = json!({"Line1": clip(address, 500)});
            }
            match company.write(
                "Customer",
                &body,
                Some(&format!("sf-cus-{job_id}-{attempt}")),
            ) {
                Ok(customer) => id_of(&customer)
                    .ok_or_else(|| Error::Failed("QuickBooks' customer has no Id".into()))?,
                // Created meanwhile by another request, or an inactive customer has the
                // name: look again, inactive ones included, and reuse it (made active).
                Err(e) if e.is_fault("6240") => {
                    let again = company.query(
                        "Customer",
                        &format!("{by_name} and Active in (true, false)"),
                    )?;
                    let found = again.first().ok_or_else(|| {
                        Error::Failed(format!(
                            "QuickBooks says the name {name:?} is taken, but not by a customer (a vendor or employee has it); rename the job's customer"
                        ))
                    })?;
                    if found.get("Active") == Some(&Value::Bool(false)) {
                        let mut fields = Map::new();
                        fields.insert("Active".into(), Value::Bool(true));
                        sparse_update(company, "Customer", found, fields)?;
                    }
                    id_of(found)
                        .ok_or_else(|| Error::Failed("QuickBooks' customer has no Id".into()))?
                }
                Err(e) => return Err(refused(job_id, attempt, e, data, settings)),
            }
        }
    };
    remember(&key, &id);
    Ok(id)
}

/// What a refused create (a `Fault`) of the job's invoicing leaves behind: QuickBooks
/// answers a repeated requestid with its first answer, a refusal included, so the job's next
/// attempt (once the admin has fixed what was refused) sends new requestids; a reference
/// QuickBooks no longer has (2500, 610: a deleted item or customer) is looked up again.
fn refused(job_id: &str, attempt: u32, e: QboError, data: &Value, settings: &Settings) -> Error {
    let error: Error = e.clone().into();
    if let QboError::Fault { code, .. } = &e {
        // On the job, with QuickBooks' words: the admin sees why, and the next attempt's
        // requestids are new. Should this write fail, the refusal is reported all the same
        // (and the next try is refused again, until it is written).
        let noted = json!({"attempt": attempt + 1, "refused": clip(&error.to_string(), 500)});
        if let Err(w) = write_back(job_id, &noted, None) {
            log::warn(&format!("could not note the refusal on job {job_id}: {w}"));
        }
        if (code == "2500" || code == "610")
            && let Err(k) = forget_references(data, settings)
        {
            log::warn(&format!("cached ids not dropped: {}", host_message(&k)));
        }
    }
    error
}

/// Drops the cached ids of the job's customer and items.
fn forget_references(data: &Value, settings: &Settings) -> Result<(), HostError> {
    if let Some(name) = text_field(data, &settings.customer_field) {
        let name: String = name.chars().take(100).collect();
        kv::delete(&format!("customer:{}", digest(&name.to_lowercase())))?;
    }
    let mut names: Vec<&String> = settings.item_map.values().collect();
    names.push(&settings.service_item);
    for name in names {
        kv::delete(&format!("item:{}", digest(name)))?;
    }
    Ok(())
}

/// The QuickBooks item of this name (`{value, name}`), cached.
fn item_ref(company: &Company, name: &str) -> Result<Value, Error> {
    let key = format!("item:{}", digest(name));
    if let Some(id) = kv::get(&key)?.and_then(|v| String::from_utf8(v).ok()) {
        return Ok(json!({"value": id, "name": name}));
    }
    let found = company.query("Item", &format!("Name = {}", quote(name)))?;
    let id = found.first().and_then(id_of).ok_or_else(|| {
        Error::Failed(format!(
            "QuickBooks has no item named {name:?}: create it there, or set service_item or item_map in the plugin's config to an item that exists"
        ))
    })?;
    remember(&key, &id);
    Ok(json!({"value": id, "name": name}))
}

fn amount(v: Option<&Value>) -> Option<f64> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s
            .trim()
            .trim_start_matches('$')
            .replace(',', "")
            .parse()
            .ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then(|| (n * 100.0).round() / 100.0)
}

/// The invoice's lines: one per line item of the job (`kind`, `description`, `quantity`,
/// `unit_price`, `amount`), or one line of the service item at the job's amount.
fn lines_for(company: &Company, data: &Value, settings: &Settings) -> Result<Vec<Value>, Error> {
    let items = data
        .get(&settings.line_items_field)
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty());
    let Some(items) = items else {
        let total = amount(data.get(&settings.amount_field)).ok_or_else(|| {
            Error::InvalidInput(format!(
                "the job has no amount in {:?}: set it, or give the job line items",
                settings.amount_field
            ))
        })?;
        let mut line = json!({
            "DetailType": "SalesItemLineDetail",
            "Amount": total,
            "SalesItemLineDetail": {"ItemRef": item_ref(company, &settings.service_item)?},
        });
        if let Some(title) = text_field(data, "title") {
            line["Description"] = json!(clip(title, 4000));
        }
        return Ok(vec![line]);
    };
    if items.len() > 100 {
        return Err(Error::InvalidInput(format!(
            "the job has {} line items; an invoice takes at most 100",
            items.len()
        )));
    }
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .get("kind")
            .or(item.get("item"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = settings
            .item_map
            .get(kind)
            .unwrap_or(&settings.service_item);
        let quantity = amount(item.get("quantity")).unwrap_or(1.0);
        let unit_price = amount(item.get("unit_price"));
        let total = amount(item.get("amount"))
            .or(unit_price.map(|p| ((p * quantity) * 100.0).round() / 100.0))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{}/{i}: a line item needs an amount, or a unit_price",
                    settings.line_items_field
                ))
            })?;
        let mut detail = json!({"ItemRef": item_ref(company, name)?, "Qty": quantity});
        if let Some(p) = unit_price {
            detail["UnitPrice"] = json!(p);
        }
        let mut line = json!({"DetailType": "SalesItemLineDetail", "Amount": total, "SalesItemLineDetail": detail});
        if let Some(d) = item.get("description").and_then(Value::as_str) {
            line["Description"] = json!(clip(d, 4000));
        }
        lines.push(line);
    }
    Ok(lines)
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// The invoice date: the job's `completed_on`, else the day it last changed (UTC).
fn job_date(data: &Value, updated_at_micros: i64) -> time::Date {
    if let Some(date) = data
        .get("completed_on")
        .and_then(Value::as_str)
        .and_then(|d| time::Date::parse(d, DATE).ok())
    {
        return date;
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(updated_at_micros as i128 * 1000)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN)
}

fn iso_date(date: time::Date) -> String {
    date.format(DATE).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_newer_by_sync_token_or_by_a_later_change() {
        let view = |token: u64, at: &str| {
            json!({"sync_token": token, "updated_at": at})
                .as_object()
                .unwrap()
                .clone()
        };
        let stored = json!({"sync_token": 2, "updated_at": "2026-12-07T10:00:00-08:00"});
        assert!(is_newer(&view(3, "2026-12-07T09:00:00-08:00"), &stored));
        assert!(!is_newer(&view(1, "2026-12-07T11:00:00-08:00"), &stored));
        assert!(!is_newer(&view(2, "2026-12-07T10:00:00-08:00"), &stored));
        // The same token, changed later (offsets compared as instants).
        assert!(is_newer(&view(2, "2026-12-07T18:30:00Z"), &stored));
        assert!(!is_newer(&view(2, "2026-12-07T17:30:00Z"), &stored));
        assert!(is_newer(&view(0, ""), &json!({})));
    }

    #[test]
    fn payment_status_follows_the_balance() {
        assert_eq!(payment_status(100.0, 100.0), "unpaid");
        assert_eq!(payment_status(100.0, 40.0), "partial");
        assert_eq!(payment_status(100.0, 0.0), "paid");
        assert_eq!(payment_status(0.0, 0.0), "paid");
    }

    #[test]
    fn a_payment_names_the_invoices_it_pays() {
        let payment = json!({"Line": [
            {"Amount": 50, "LinkedTxn": [{"TxnId": "130", "TxnType": "Invoice"}]},
            {"Amount": 10, "LinkedTxn": [{"TxnId": 131, "TxnType": "Invoice"}, {"TxnId": "9", "TxnType": "CreditMemo"}]},
            {"Amount": 5, "LinkedTxn": [{"TxnId": "130", "TxnType": "Invoice"}]}
        ]});
        assert_eq!(paid_invoices(&payment), vec!["130", "131"]);
        assert!(paid_invoices(&json!({})).is_empty());
    }

    #[test]
    fn amounts_accept_numbers_and_money_text() {
        assert_eq!(amount(Some(&json!(1250.456))), Some(1250.46));
        assert_eq!(amount(Some(&json!("$1,250.50"))), Some(1250.5));
        assert_eq!(amount(Some(&json!(-3))), None);
        assert_eq!(amount(Some(&json!("abc"))), None);
        assert_eq!(amount(None), None);
    }

    #[test]
    fn the_invoice_date_is_the_completion_day() {
        let d = job_date(&json!({"completed_on": "2026-11-30"}), 0);
        assert_eq!(iso_date(d), "2026-11-30");
        // 2026-12-01T12:00:00Z
        let d = job_date(&json!({}), 1_796_126_400_000_000);
        assert_eq!(iso_date(d), "2026-12-01");
    }
}
