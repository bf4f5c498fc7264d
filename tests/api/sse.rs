//! A small server-sent events client for the watch tests: reads `event:`, `id:` and
//! `data:` fields as the HTML standard says, skips comments, dispatches on blank lines.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

/// One event (fields named as the standard names them).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::struct_field_names)]
pub struct Event {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:`, when the event had one.
    pub id: Option<String>,
    /// `data:` lines joined by newlines.
    pub data: String,
}

impl Event {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An open stream.
pub struct Stream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: Vec<u8>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    ended: bool,
}

/// How a read ended without an event.
#[derive(Debug, PartialEq, Eq)]
pub enum NoEvent {
    /// The server closed the stream.
    Ended,
    /// Nothing within the time given.
    Quiet,
}

impl Stream {
    /// Opens `url` with `headers`; the status and, for 200, the stream (else the body).
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Self, (u16, Value)> {
        let client = reqwest::Client::new();
        let mut request = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            return Err((status, body));
        }
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Ok(Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            comments: 0,
            ended: false,
        })
    }

    /// The next event within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Event, NoEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.parse_one() {
                return Ok(event);
            }
            if self.ended {
                return Err(NoEvent::Ended);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(NoEvent::Quiet),
                Ok(None | Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }

    /// Events until `n` change events (`put`/`delete`) have come, or `within` passes.
    pub async fn changes(&mut self, n: usize, within: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        let mut count = 0;
        while count < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(e) => {
                    if e.event == "put" || e.event == "delete" {
                        count += 1;
                    }
                    let error = e.event == "error";
                    seen.push(e);
                    if error {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        seen
    }

    /// One whole event from the buffer, if it holds one.
    fn parse_one(&mut self) -> Option<Event> {
        loop {
            let text = std::str::from_utf8(&self.buffer).ok()?;
            let end = text.find("\n\n")?;
            let block: String = text[..end].to_owned();
            self.buffer.drain(..end + 2);
            let mut event = Event {
                event: "message".into(),
                id: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.split('\n') {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => value.clone_into(&mut event.event),
                    "id" => event.id = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data {
                return Some(event);
            }
        }
    }
}
