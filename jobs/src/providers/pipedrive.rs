//! Pipedrive client: not implemented yet. Every call answers [`ProviderError::Protocol`] saying so,
//! so a connection to Pipedrive fails loudly instead of silently doing nothing.

use super::{
    ActionObject, Auth, ContactInput, CreateNote, CreateTask, CrmClient, CrmRecord, ExternalRef, Http,
    LogCall, ObjectKind, Provider, ProviderError, ProviderResult, SyncCursor, SyncPage, UpdateDeal,
};

/// Pipedrive client.
#[derive(Debug, Clone)]
pub struct PipedriveClient {
    #[allow(dead_code)]
    http: Http,
}

impl PipedriveClient {
    /// A client over the shared HTTP client.
    pub fn new(http: Http) -> Self {
        Self { http }
    }
}

fn unsupported<T>() -> ProviderResult<T> {
    Err(ProviderError::Protocol { status: 0, message: "the pipedrive client is not implemented yet".into() })
}

#[async_trait::async_trait]
impl CrmClient for PipedriveClient {
    fn provider(&self) -> Provider {
        Provider::Pipedrive
    }
    async fn sync_page(&self, _: &Auth, _: ObjectKind, _: &SyncCursor) -> ProviderResult<SyncPage> {
        unsupported()
    }
    async fn get(&self, _: &Auth, _: ObjectKind, _: &str) -> ProviderResult<Option<CrmRecord>> {
        unsupported()
    }
    async fn create_task(&self, _: &Auth, _: &CreateTask) -> ProviderResult<ExternalRef> {
        unsupported()
    }
    async fn update_deal(&self, _: &Auth, _: &UpdateDeal) -> ProviderResult<ExternalRef> {
        unsupported()
    }
    async fn log_call(&self, _: &Auth, _: &LogCall) -> ProviderResult<ExternalRef> {
        unsupported()
    }
    async fn create_contact(&self, _: &Auth, _: &ContactInput) -> ProviderResult<ExternalRef> {
        unsupported()
    }
    async fn update_contact(&self, _: &Auth, _: &str, _: &ContactInput) -> ProviderResult<ExternalRef> {
        unsupported()
    }
    async fn create_note(&self, _: &Auth, _: &CreateNote) -> ProviderResult<ExternalRef> {
        unsupported()
    }
    async fn search_contact_by_email(&self, _: &Auth, _: &str) -> ProviderResult<Option<CrmRecord>> {
        unsupported()
    }
    async fn find_by_marker(
        &self,
        _: &Auth,
        _: ActionObject,
        _: &str,
    ) -> ProviderResult<Option<ExternalRef>> {
        unsupported()
    }
}
