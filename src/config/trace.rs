//! `[trace]`: where spans are exported (OTLP over HTTP/protobuf), fed by the standard
//! `OTEL_EXPORTER_OTLP_*` variables.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// A collector's OTLP/HTTP base URL; spans go to `<url>/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// The full URL spans are posted to; wins over `otlp_endpoint`.
    pub otlp_traces_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl TraceConfig {
    /// Where spans are posted, as the OTLP exporter specification derives it: the traces
    /// endpoint as given, else the base endpoint with `v1/traces` appended. `None`: export is off.
    pub fn traces_url(&self) -> Option<String> {
        if let Some(url) = non_empty(&self.otlp_traces_endpoint) {
            return Some(url.to_owned());
        }
        let base = non_empty(&self.otlp_endpoint)?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

/// An empty variable (`OTEL_EXPORTER_OTLP_ENDPOINT=`) counts as unset, as the specification says.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: Option<&str>, traces: Option<&str>) -> TraceConfig {
        TraceConfig {
            otlp_endpoint: base.map(str::to_owned),
            otlp_traces_endpoint: traces.map(str::to_owned),
            service_name: "neo-sessions".to_owned(),
        }
    }

    #[test]
    fn the_traces_url_follows_the_otlp_exporter_rules() {
        assert_eq!(config(None, None).traces_url(), None);
        assert_eq!(config(Some(" "), Some("")).traces_url(), None);
        assert_eq!(
            config(Some("http://collector:4318"), None)
                .traces_url()
                .as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            config(Some("http://collector:4318/base/"), None)
                .traces_url()
                .as_deref(),
            Some("http://collector:4318/base/v1/traces")
        );
        // The signal's own endpoint is used as given, and wins.
        assert_eq!(
            config(Some("http://a:4318"), Some("http://b:4318/custom"))
                .traces_url()
                .as_deref(),
            Some("http://b:4318/custom")
        );
    }
}
