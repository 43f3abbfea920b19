//! The provider-neutral shapes syncs and actions work with.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use url::Url;

/// The objects a sync keeps in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// People: HubSpot contacts, Salesforce Contact, Pipedrive persons, Zoho Contacts, Close contacts.
    Contact,
    /// Organisations: companies, Account, organizations, Accounts, leads (Close).
    Company,
    /// Deals: deals, Opportunity, deals, Deals, opportunities.
    Deal,
}

impl ObjectKind {
    /// All synced objects.
    pub const ALL: [ObjectKind; 3] = [Self::Contact, Self::Company, Self::Deal];

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contact => "contact",
            Self::Company => "company",
            Self::Deal => "deal",
        }
    }
}

impl std::str::FromStr for ObjectKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "contact" | "contacts" => Ok(Self::Contact),
            "company" | "companies" => Ok(Self::Company),
            "deal" | "deals" => Ok(Self::Deal),
            other => Err(format!("unknown object {other:?} (expected contact, company or deal)")),
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CRM record normalised for the local store; `raw` keeps the provider's own shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRecord {
    /// The provider's id.
    pub external_id: String,
    /// What it is.
    pub object: ObjectKind,
    /// Email (contacts).
    pub email: Option<String>,
    /// First name (contacts).
    pub first_name: Option<String>,
    /// Last name (contacts).
    pub last_name: Option<String>,
    /// Display name: the person's full name, the company's or deal's name.
    pub name: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// The related company's id or name (contacts, deals).
    pub company: Option<String>,
    /// Amount (deals), in the currency's major unit.
    pub amount: Option<f64>,
    /// Currency code (deals).
    pub currency: Option<String>,
    /// Stage (deals).
    pub stage: Option<String>,
    /// Close date (deals).
    pub close_date: Option<NaiveDate>,
    /// Owner id.
    pub owner: Option<String>,
    /// When the provider last changed it.
    pub remote_updated_at: DateTime<Utc>,
    /// The provider's record as received.
    pub raw: serde_json::Value,
}

impl CrmRecord {
    /// A record with only identity and time set (clients fill the rest).
    pub fn new(external_id: impl Into<String>, object: ObjectKind, remote_updated_at: DateTime<Utc>) -> Self {
        Self {
            external_id: external_id.into(),
            object,
            email: None,
            first_name: None,
            last_name: None,
            name: None,
            phone: None,
            company: None,
            amount: None,
            currency: None,
            stage: None,
            close_date: None,
            owner: None,
            remote_updated_at,
            raw: serde_json::Value::Null,
        }
    }
}

/// A record the provider reports deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedRecord {
    /// The provider's id.
    pub external_id: String,
    /// When it was deleted, if the provider says.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Where a sync run stands, stored with every committed page. Each client interprets the
/// fields its strategy needs; the sync engine treats it as opaque except for `since` (set on a
/// forced full sync) and `run_started`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCursor {
    /// Lower bound of changes to fetch (`None`: everything, a full sync).
    pub since: Option<DateTime<Utc>>,
    /// Provider-specific phase (`records`, `deleted`, `archived`, …); empty at the start of a run.
    #[serde(default)]
    pub phase: String,
    /// Provider page token (`after`, `nextRecordsUrl`, `cursor`, `page_token`, offset).
    #[serde(default)]
    pub token: Option<String>,
    /// Highest remote modification time seen in this run; the next run starts from it.
    #[serde(default)]
    pub high_water: Option<DateTime<Utc>>,
    /// Ids of the records seen at exactly `high_water` in this run (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub high_water_ids: Vec<String>,
    /// Ids already read at exactly `since` by the previous run: a query from `since` inclusive
    /// returns them again, and [`SyncCursor::seen_at_since`] lets the client skip them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub since_ids: Vec<String>,
    /// Provider-specific state (window bounds, ids already seen at a boundary, …).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// Most boundary ids a cursor keeps; past this the boundary is re-read (harmless: upserts are
/// idempotent and unchanged rows are not counted as updated).
pub const MAX_BOUNDARY_IDS: usize = 500;

impl SyncCursor {
    /// The cursor of a full sync.
    pub fn full() -> Self {
        Self::default()
    }

    /// The cursor of an incremental sync from `since`.
    pub fn since(since: DateTime<Utc>) -> Self {
        Self { since: Some(since), ..Self::default() }
    }

    /// Whether this cursor is at the start of a run.
    pub fn at_start(&self) -> bool {
        self.phase.is_empty() && self.token.is_none()
    }

    /// The cursor the next run starts from once this run is done: changes since the high
    /// water mark (or since the same bound when nothing changed), remembering which records
    /// were already read at exactly that mark.
    pub fn next_run(&self) -> Self {
        match self.high_water {
            Some(hw) if Some(hw) == self.since => {
                let mut ids = self.since_ids.clone();
                ids.extend(self.high_water_ids.iter().cloned());
                ids.sort();
                ids.dedup();
                if ids.len() > MAX_BOUNDARY_IDS {
                    ids.clear();
                }
                Self { since: Some(hw), since_ids: ids, ..Self::default() }
            }
            Some(hw) => Self { since: Some(hw), since_ids: self.high_water_ids.clone(), ..Self::default() },
            None => Self { since: self.since, since_ids: self.since_ids.clone(), ..Self::default() },
        }
    }

    /// Raises the high-water mark to `t`.
    pub fn observe(&mut self, t: DateTime<Utc>) {
        if self.high_water.is_none_or(|h| t > h) {
            self.high_water = Some(t);
            self.high_water_ids.clear();
        }
    }

    /// Raises the high-water mark to `t` and remembers `id` when it sits exactly on it.
    pub fn observe_record(&mut self, t: DateTime<Utc>, id: &str) {
        self.observe(t);
        if self.high_water == Some(t) && self.high_water_ids.len() < MAX_BOUNDARY_IDS {
            self.high_water_ids.push(id.to_owned());
        }
    }

    /// Whether a record modified at `t` was already read by the previous run (it sits exactly
    /// on this run's lower bound and its id was recorded there).
    pub fn seen_at_since(&self, t: DateTime<Utc>, id: &str) -> bool {
        self.since == Some(t) && self.since_ids.iter().any(|s| s == id)
    }
}

/// One page of a sync.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPage {
    /// Records created or changed.
    pub records: Vec<CrmRecord>,
    /// Records deleted.
    pub deleted: Vec<DeletedRecord>,
    /// The cursor to store with this page. When `has_more` is false it is already the next
    /// run's starting cursor.
    pub next: SyncCursor,
    /// Whether the run continues.
    pub has_more: bool,
}

/// How requests authenticate. Holds a secret, so it has no `Debug` derive.
#[derive(Clone)]
pub enum Credential {
    /// `Authorization: Bearer <token>` (HubSpot, Salesforce, Pipedrive OAuth, Close OAuth).
    Bearer(secrecy::SecretString),
    /// `Authorization: Zoho-oauthtoken <token>`.
    ZohoOauth(secrecy::SecretString),
    /// Pipedrive API token in the `x-api-token` header.
    ApiTokenHeader(secrecy::SecretString),
    /// HTTP Basic with the key as user and an empty password (Close API keys).
    BasicKey(secrecy::SecretString),
}

/// What a client needs to call one connection's account.
#[derive(Clone)]
pub struct Auth {
    /// The credential.
    pub credential: Credential,
    /// The API base for this account: HubSpot's API host, Salesforce `instance_url`, Pipedrive or
    /// Zoho `api_domain`, Close's API host. Always the one the token response gave, never a
    /// hard-coded host.
    pub api_base: Url,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_base", &self.api_base.as_str())
            .field("credential", &"[redacted]")
            .finish()
    }
}

impl Auth {
    /// An absolute URL for `path` under the API base (`path` starts with `/`).
    pub fn url(&self, path: &str) -> Result<Url, crate::providers::ProviderError> {
        let base = self.api_base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}")).map_err(|e| crate::providers::ProviderError::Protocol {
            status: 0,
            message: format!("bad URL for path {path}: {e}"),
        })
    }
}

/// The kinds of object actions create, for reconciliation by marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionObject {
    /// A task.
    Task,
    /// A logged call.
    Call,
    /// A note.
    Note,
    /// A contact.
    Contact,
}

/// An object an action created or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// The provider's id.
    pub id: String,
    /// Whether this call created it (false: it already existed and was adopted or updated).
    pub created: bool,
}

/// Create a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTask {
    /// Subject / title.
    pub subject: String,
    /// Body / description.
    #[serde(default)]
    pub body: Option<String>,
    /// Due date and time.
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// Related contact id.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Related deal id.
    #[serde(default)]
    pub deal_id: Option<String>,
    /// Related company id (Close: the lead id).
    #[serde(default)]
    pub company_id: Option<String>,
    /// Priority: low, normal, high.
    #[serde(default)]
    pub priority: Option<String>,
    /// Owner / assignee id.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// The idempotency marker written into the object (filled by the executor).
    #[serde(default)]
    pub marker: String,
}

/// Update a deal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateDeal {
    /// The deal's id.
    pub deal_id: String,
    /// New stage (the provider's stage id or name).
    #[serde(default)]
    pub stage: Option<String>,
    /// New amount, major currency unit.
    #[serde(default)]
    pub amount: Option<f64>,
    /// New close date.
    #[serde(default)]
    pub close_date: Option<NaiveDate>,
}

/// Log a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogCall {
    /// Title / subject.
    pub subject: String,
    /// Notes.
    #[serde(default)]
    pub body: Option<String>,
    /// `inbound` or `outbound`.
    #[serde(default = "default_direction")]
    pub direction: String,
    /// Duration in seconds.
    #[serde(default)]
    pub duration_secs: u32,
    /// When the call happened.
    pub occurred_at: DateTime<Utc>,
    /// Related contact id.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Related deal id.
    #[serde(default)]
    pub deal_id: Option<String>,
    /// Related company id (Close: the lead id).
    #[serde(default)]
    pub company_id: Option<String>,
    /// The idempotency marker.
    #[serde(default)]
    pub marker: String,
}

fn default_direction() -> String {
    "outbound".to_owned()
}

/// Create or update a contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactInput {
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Phone.
    #[serde(default)]
    pub phone: Option<String>,
    /// Company id (Salesforce AccountId, Pipedrive org_id, Close lead_id, …).
    #[serde(default)]
    pub company_id: Option<String>,
    /// Job title.
    #[serde(default)]
    pub title: Option<String>,
    /// The idempotency marker (creates only).
    #[serde(default)]
    pub marker: String,
}

/// Create a note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateNote {
    /// Text (plain or simple HTML).
    pub body: String,
    /// Title, where the provider has one.
    #[serde(default)]
    pub title: Option<String>,
    /// Related contact id.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// Related deal id.
    #[serde(default)]
    pub deal_id: Option<String>,
    /// Related company id (Close: the lead id).
    #[serde(default)]
    pub company_id: Option<String>,
    /// The idempotency marker.
    #[serde(default)]
    pub marker: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().expect("time")
    }

    #[test]
    fn the_next_run_skips_exactly_the_records_read_at_the_boundary() {
        let mut c = SyncCursor::full();
        c.observe_record(t(10), "a");
        c.observe_record(t(20), "b");
        c.observe_record(t(20), "c");
        c.observe_record(t(15), "d");
        let next = c.next_run();
        assert_eq!(next.since, Some(t(20)));
        assert!(next.seen_at_since(t(20), "b") && next.seen_at_since(t(20), "c"));
        assert!(!next.seen_at_since(t(20), "e"), "a new record at the boundary is not skipped");
        assert!(!next.seen_at_since(t(21), "b"), "a later change of a boundary record is not skipped");

        // A run that saw nothing newer keeps (and extends) the boundary set.
        let mut quiet = next.clone();
        quiet.observe_record(t(20), "e");
        let after = quiet.next_run();
        assert_eq!(after.since, Some(t(20)));
        assert!(after.seen_at_since(t(20), "b") && after.seen_at_since(t(20), "e"));
    }
}
