//! End-to-end tests: the real server on an ephemeral port, on SQLite and on PostgreSQL.

mod harness;

mod adp;
mod auth;
mod binary;
mod client;
mod contract;
mod dispatch;
mod fake;
mod fake_adp;
mod fake_google_ads;
mod fake_mtls;
mod fake_qbo;
mod fake_sam;
mod fake_st;
mod google_lsa;
mod hardening;
mod integrations;
mod isolation;
mod migrations;
mod ops;
mod plugin_limits;
mod plugins;
mod quickbooks;
mod records;
mod roles;
mod samgov;
mod scoring;
mod servicetitan;
mod templates;
