//! The optional read replica (`VEGA_DATABASE_READER_URL`, or `VEGA_DATABASE_READER_HOST` with
//! the writer's other parts): an RDS read replica, Aurora's reader endpoint, or a streaming
//! standby. The repository layer sends the reads that may be stale to it; everything else
//! stays on the writer.

use crate::{Backend, ConfigError, DatabaseSettings, DatabaseUrl, Source};

const URL_VAR: &str = "VEGA_DATABASE_READER_URL";
const HOST_VAR: &str = "VEGA_DATABASE_READER_HOST";

/// The reader's settings, if one is configured: its URL, or the writer's URL with the host
/// replaced (credentials, port, database and TLS settings are the writer's, as they are on
/// RDS and Aurora). The pooler setting is the writer's.
pub(crate) fn from_lookup(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    writer: &DatabaseSettings,
) -> Result<Option<DatabaseSettings>, ConfigError> {
    let (url, var) = match (lookup(URL_VAR)?, lookup(HOST_VAR)?) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError::TwoDatabaseSources {
                url_var: URL_VAR,
                part_var: HOST_VAR,
            });
        }
        (Some(url), None) => (url.trim().to_owned(), URL_VAR),
        (None, Some(host)) => (with_host(writer, host.trim())?, HOST_VAR),
    };
    if writer.backend != Backend::Postgres {
        return Err(ConfigError::ReaderNeedsPostgres { var });
    }
    let reader = DatabaseSettings {
        backend: Backend::Postgres,
        backend_source: writer.backend_source,
        url: DatabaseUrl::new(url),
        url_source: Source::Env(var),
        pooler: writer.pooler,
    };
    reader.validate(var)?;
    Ok(Some(reader))
}

fn with_host(writer: &DatabaseSettings, host: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidDatabasePart {
        var: HOST_VAR,
        reason,
    };
    let mut url = url::Url::parse(writer.url.expose())
        .map_err(|_| invalid("the writer's URL is not a Postgres URL".into()))?;
    if host.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    url.set_host(Some(host))
        .map_err(|e| invalid(format!("{host:?} is not a host name ({e})")))?;
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reader(vars: &[(&'static str, &str)]) -> Result<Option<DatabaseSettings>, ConfigError> {
        let map: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let settings = crate::Settings::from_lookup(|k| Ok(map.get(k).cloned()))?;
        Ok(settings.reader)
    }

    #[test]
    fn none_unless_configured() {
        assert_eq!(
            reader(&[("VEGA_DATABASE_URL", "postgres://u@w/db")]).unwrap(),
            None
        );
    }

    #[test]
    fn a_host_takes_the_writers_other_parts() {
        let r = reader(&[
            (
                "VEGA_DATABASE_URL",
                "postgres://u:p%40ss@writer:6432/db?sslmode=require",
            ),
            ("VEGA_DATABASE_READER_HOST", "reader.example"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            r.url.expose(),
            "postgres://u:p%40ss@reader.example:6432/db?sslmode=require"
        );
        assert_eq!(r.url_source, Source::Env(HOST_VAR));
    }

    #[test]
    fn a_url_is_taken_whole() {
        let r = reader(&[
            ("VEGA_DATABASE_URL", "postgres://u@w/db"),
            ("VEGA_DATABASE_READER_URL", "postgres://u@r:5433/db"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(r.port(), Some(5433));
    }

    #[test]
    fn refusals_name_the_variable() {
        let both = reader(&[
            ("VEGA_DATABASE_URL", "postgres://u@w/db"),
            ("VEGA_DATABASE_READER_URL", "postgres://u@r/db"),
            ("VEGA_DATABASE_READER_HOST", "r"),
        ])
        .unwrap_err();
        assert!(both.to_string().contains(HOST_VAR), "{both}");
        let sqlite = reader(&[("VEGA_DATABASE_READER_HOST", "r")]).unwrap_err();
        assert_eq!(sqlite, ConfigError::ReaderNeedsPostgres { var: HOST_VAR });
        let scheme = reader(&[
            ("VEGA_DATABASE_URL", "postgres://u@w/db"),
            ("VEGA_DATABASE_READER_URL", "sqlite://x.db"),
        ])
        .unwrap_err();
        assert!(scheme.to_string().contains(URL_VAR), "{scheme}");
    }
}
