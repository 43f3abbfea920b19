//! Outbound CRM actions: the typed model parsed at the API edge ([`model`]), their idempotent
//! storage ([`store`]), and the executor that carries each out at most once at the provider as
//! far as the provider allows ([`exec`]), and the sweep that pushes again an action left
//! without a job ([`repush`]).

pub mod exec;
pub mod model;
pub mod repush;
pub mod store;

pub use model::{ACTION_NAMES, Action, FieldError, parse};
pub use store::{ActionRow, Created, NewAction};
