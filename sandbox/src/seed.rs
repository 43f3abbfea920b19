//! Deterministic randomness and the word pools seeded data is made from.
//!
//! Every random choice in the sandbox (seeded records, mutation batches, tokens, correlation ids, fault
//! error rates) draws from a [`ChaCha8Rng`] derived here from the sandbox seed plus a list of labels
//! naming the purpose (`["hubspot", "20000001", "contacts"]`). Invariant: the same seed and labels give
//! the same stream on every platform and run, and streams with different labels are independent, so
//! adding a provider or an account never changes the data of another one.

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Derives an independent, reproducible random stream from `seed` and `labels`.
pub fn rng_for(seed: u64, labels: &[&str]) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"crm-sandbox/v1");
    h.update(seed.to_le_bytes());
    for l in labels {
        h.update((l.len() as u64).to_le_bytes());
        h.update(l.as_bytes());
    }
    let digest: [u8; 32] = h.finalize().into();
    ChaCha8Rng::from_seed(digest)
}

/// A shared, lock-protected deterministic stream for values minted while serving requests
/// (tokens, authorization codes, correlation ids).
#[derive(Debug)]
pub struct SharedRng {
    rng: Mutex<ChaCha8Rng>,
}

impl SharedRng {
    /// A stream derived from `seed` and `labels`.
    pub fn new(seed: u64, labels: &[&str]) -> Self {
        Self { rng: Mutex::new(rng_for(seed, labels)) }
    }

    /// A random string of `len` characters drawn from `alphabet`.
    pub fn string(&self, alphabet: &[u8], len: usize) -> String {
        let mut rng = self.rng.lock();
        random_string(&mut *rng, alphabet, len)
    }

    /// A random UUID (version-4 layout) as lowercase hyphenated text.
    pub fn uuid(&self) -> String {
        let mut rng = self.rng.lock();
        random_uuid(&mut *rng)
    }

    /// A uniformly random `f64` in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        self.rng.lock().random::<f64>()
    }

    /// Runs `f` with the underlying generator.
    pub fn with<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        f(&mut self.rng.lock())
    }
}

/// Lowercase letters and digits.
pub const ALNUM_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Letters (both cases) and digits.
pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The URL-safe base64 alphabet.
pub const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Hexadecimal digits.
pub const HEX: &[u8] = b"0123456789abcdef";

/// A random string of `len` characters drawn from `alphabet`.
pub fn random_string(rng: &mut impl Rng, alphabet: &[u8], len: usize) -> String {
    (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

/// A random UUID (version-4 layout) as lowercase hyphenated text.
pub fn random_uuid(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// Picks one element of a non-empty slice.
pub fn pick<'a>(rng: &mut impl Rng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// Given names used for seeded people.
pub const FIRST_NAMES: &[&str] = &[
    "Aino", "Ben", "Carla", "Dmitri", "Elena", "Farah", "Gustav", "Hana", "Ibrahim", "Julia", "Kenji",
    "Laura", "Mateo", "Nora", "Oskar", "Priya", "Quentin", "Rosa", "Samuel", "Tuula", "Uma", "Viktor", "Wen",
    "Ximena", "Yusuf", "Zoe", "Amara", "Bruno", "Chloe", "Diego", "Eero", "Fatima", "Giulia", "Hugo", "Ines",
    "Jonas", "Kaisa", "Liam", "Maya", "Niko",
];

/// Family names used for seeded people.
pub const LAST_NAMES: &[&str] = &[
    "Virtanen",
    "Smith",
    "Garcia",
    "Ivanova",
    "Nguyen",
    "Kumar",
    "Tanaka",
    "Okafor",
    "Muller",
    "Rossi",
    "Silva",
    "Johansson",
    "Kowalski",
    "Haddad",
    "Chen",
    "Dubois",
    "Novak",
    "Larsen",
    "Moreau",
    "Costa",
    "Kim",
    "Andersen",
    "Lopez",
    "Bianchi",
    "Schmidt",
    "Nieminen",
    "Walker",
    "Yilmaz",
    "Santos",
    "Ahmed",
];

/// First words of seeded company names.
pub const COMPANY_PREFIXES: &[&str] = &[
    "Acme",
    "Northwind",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Vandelay",
    "Aurora",
    "Borealis",
    "Cobalt",
    "Delta",
    "Ember",
    "Fjord",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Kestrel",
    "Lumen",
    "Meridian",
    "Nimbus",
    "Orchid",
    "Pinnacle",
    "Quartz",
    "Riverside",
    "Summit",
    "Tundra",
    "Vertex",
];

/// Second words of seeded company names.
pub const COMPANY_SUFFIXES: &[&str] = &[
    "Labs",
    "Systems",
    "Logistics",
    "Foods",
    "Energy",
    "Analytics",
    "Robotics",
    "Partners",
    "Software",
    "Health",
    "Media",
    "Capital",
    "Works",
    "Dynamics",
    "Networks",
];

/// Cities for seeded addresses.
pub const CITIES: &[&str] = &[
    "Helsinki", "Boston", "Berlin", "Lisbon", "Tokyo", "Toronto", "Madrid", "Oslo", "Austin", "Dublin",
    "Sydney", "Paris",
];

/// Countries for seeded addresses.
pub const COUNTRIES: &[&str] = &[
    "Finland",
    "United States",
    "Germany",
    "Portugal",
    "Japan",
    "Canada",
    "Spain",
    "Norway",
    "Ireland",
    "Australia",
    "France",
];

/// Verbs for seeded task subjects and call titles.
pub const ACTIVITY_VERBS: &[&str] = &[
    "Follow up with",
    "Call",
    "Send proposal to",
    "Demo for",
    "Check in with",
    "Renewal call with",
    "Qualify",
    "Onboard",
];

/// Words for seeded note bodies.
pub const NOTE_WORDS: &[&str] = &[
    "budget",
    "timeline",
    "pricing",
    "integration",
    "security",
    "review",
    "renewal",
    "pilot",
    "stakeholders",
    "contract",
    "discount",
    "migration",
    "training",
    "roadmap",
    "feedback",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_labels_same_stream_different_labels_different_stream() {
        let a: Vec<u64> = (0..4).map(|_| 0).scan(rng_for(7, &["x", "y"]), |r, _| Some(r.random())).collect();
        let b: Vec<u64> = (0..4).map(|_| 0).scan(rng_for(7, &["x", "y"]), |r, _| Some(r.random())).collect();
        let c: Vec<u64> = (0..4).map(|_| 0).scan(rng_for(7, &["xy"]), |r, _| Some(r.random())).collect();
        let d: Vec<u64> = (0..4).map(|_| 0).scan(rng_for(8, &["x", "y"]), |r, _| Some(r.random())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c, "label boundaries must matter");
        assert_ne!(a, d, "the seed must matter");
    }

    #[test]
    fn uuids_have_v4_layout() {
        let u = SharedRng::new(1, &["t"]).uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
