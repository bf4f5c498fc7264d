//! Fuzzes the gateway's decoding of what a node answers (`node_client::decode`): the
//! envelope answers of get and put, and the lists of history and discover. A node is another
//! machine; whatever it sends, the gateway must either believe a well-formed answer or call
//! it a bad answer, never panic.
//!
//! The first byte picks the HTTP status the answer came with and the expected data shape;
//! the rest is the body.
//!
//! Invariants checked:
//! - a believed 2xx carries a success code of that very status;
//! - a refusal (4xx) carries an error code of that very status;
//! - other statuses are never believed;
//! - a believed envelope encodes to JSON that decodes to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustle_gateway::upstream::ucxi::{Answer, decode};
use serde::de::DeserializeOwned;
use ucxl::{Envelope, History};

const STATUSES: [u16; 8] = [200, 201, 400, 404, 409, 413, 302, 500];

fn check<T: DeserializeOwned>(status: u16, body: &[u8]) -> Option<T> {
    match decode::<T>(status, body) {
        Ok(Answer::Ok { code, data }) => {
            assert!((200..300).contains(&status), "believed a {status}");
            assert_eq!(code.status(), status);
            assert!(code.is_success());
            Some(data)
        }
        Ok(Answer::Refused(refusal)) => {
            assert!((400..500).contains(&status), "a refusal with {status}");
            assert_eq!(refusal.code.status(), status);
            None
        }
        Err(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector) % STATUSES.len()];
    match selector / 64 {
        0 | 1 => {
            if let Some(envelope) = check::<Envelope>(status, body) {
                let encoded = serde_json::to_vec(&envelope).expect("an envelope encodes");
                let again: Envelope =
                    serde_json::from_slice(&encoded).expect("an encoded envelope decodes");
                assert_eq!(again, envelope, "envelope round trip");
            }
        }
        2 => {
            let _ = check::<History>(status, body);
        }
        _ => {
            let _ = check::<serde_json::Value>(status, body);
        }
    }
});
