//! Server-sent events framing (the WHATWG `text/event-stream` format), decoded incrementally
//! from the chunks egress hands out. Both OpenAI and Anthropic stream in it. Hand-written
//! rather than a crate because the streaming crates expect a `futures::Stream` of bytes and
//! egress hands out chunks; the format is a few lines.

use bulkhead_egress::StreamingResponse;

use super::{ProviderError, error_from_status};

/// One dispatched event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// An event larger than this is refused rather than buffered without end.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// A `\r` ended the last chunk; a `\n` opening the next belongs to it.
    after_cr: bool,
}

impl SseDecoder {
    /// Feeds bytes; answers the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ProviderError> {
        let mut events = Vec::new();
        let mut bytes = bytes;
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        for (i, &byte) in bytes.iter().enumerate() {
            match byte {
                b'\n' | b'\r' => {
                    if byte == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                        continue;
                    }
                    if byte == b'\r' && i + 1 == bytes.len() {
                        self.after_cr = true;
                    }
                    let line = std::mem::take(&mut self.pending);
                    if let Some(event) = self.line(&line)? {
                        events.push(event);
                    }
                }
                _ => {
                    self.pending.push(byte);
                    if self.pending.len() > MAX_EVENT_BYTES {
                        return Err(ProviderError::Malformed("an event is too large".into()));
                    }
                }
            }
        }
        Ok(events)
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, ProviderError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| ProviderError::Malformed("the event stream is not UTF-8".into()))?;
        if line.is_empty() {
            if self.data.is_empty() {
                self.event = None;
                return Ok(None);
            }
            return Ok(Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
            }));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(None)
    }
}

/// Passes a 2xx streaming answer on; any other status becomes the provider's typed error,
/// read from its (whole, capped) body.
pub async fn expect_stream(
    mut response: StreamingResponse,
) -> Result<StreamingResponse, ProviderError> {
    if (200..300).contains(&response.status) {
        return Ok(response);
    }
    let body = response.chunk().await?.unwrap_or_default();
    Err(error_from_status(response.status, &body))
}

/// Reads `response` to its end, handing each event to `on_event` until it answers `true`
/// (the stream's own end marker). A stream that stops without one is truncated: an error.
pub async fn read_events(
    response: &mut StreamingResponse,
    mut on_event: impl FnMut(SseEvent) -> Result<bool, ProviderError>,
) -> Result<(), ProviderError> {
    let mut decoder = SseDecoder::default();
    while let Some(chunk) = response.chunk().await? {
        for event in decoder.push(&chunk)? {
            if on_event(event)? {
                return Ok(());
            }
        }
    }
    Err(ProviderError::Malformed(
        "the event stream ended before its final event".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &str, piece: usize) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in input.as_bytes().chunks(piece) {
            events.extend(decoder.push(chunk).unwrap());
        }
        events
    }

    #[test]
    fn decodes_events_split_anywhere() {
        let input = ": keep-alive\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: one\ndata: two\n\nid: 7\nretry: 10\ndata:[DONE]\n\n";
        let expected = vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "one\ntwo".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in 1..input.len() {
            assert_eq!(decode_in_pieces(input, piece), expected, "piece {piece}");
        }
    }

    #[test]
    fn an_event_without_its_blank_line_is_not_dispatched() {
        assert!(decode_in_pieces("data: partial\n", 4).is_empty());
    }
}
