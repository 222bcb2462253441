//! A Postgres URL assembled from separate variables, the shape an ECS task gets when its
//! credentials come from the RDS-managed secret's JSON keys (`username`, `password`) and the
//! endpoint from Terraform outputs. RDS rotates that secret, so a stored full URL would go
//! stale; building it at start-up from the current password does not.

use crate::ConfigError;

/// The database host; setting it selects this way of configuring the database.
pub(crate) const HOST_VAR: &str = "VEGA_DATABASE_HOST";
const PORT_VAR: &str = "VEGA_DATABASE_PORT";
const NAME_VAR: &str = "VEGA_DATABASE_NAME";
const USER_VAR: &str = "VEGA_DATABASE_USER";
const PASSWORD_VAR: &str = "VEGA_DATABASE_PASSWORD";
const SSLMODE_VAR: &str = "VEGA_DATABASE_SSLMODE";
const SSLROOTCERT_VAR: &str = "VEGA_DATABASE_SSLROOTCERT";

/// Every variable of this group, for "set one or the other" errors.
pub(crate) const VARS: [&str; 7] = [
    HOST_VAR,
    PORT_VAR,
    NAME_VAR,
    USER_VAR,
    PASSWORD_VAR,
    SSLMODE_VAR,
    SSLROOTCERT_VAR,
];

/// The first variable of the group that is set, if any.
pub(crate) fn first_set(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
) -> Result<Option<&'static str>, ConfigError> {
    for var in VARS {
        if lookup(var)?.is_some() {
            return Ok(Some(var));
        }
    }
    Ok(None)
}

/// Builds `postgres://user:password@host:port/name[?sslmode=...&sslrootcert=...]`, percent-encoding the user,
/// password and database name so any character a secret generator picks survives.
/// `set` is the variable that selected this way of configuring, for the error when a required
/// one is missing.
pub(crate) fn url_from_parts(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    set: &'static str,
) -> Result<String, ConfigError> {
    let required =
        |var: &'static str| lookup(var)?.ok_or(ConfigError::MissingDatabasePart { var, set });
    let host = required(HOST_VAR)?;
    let name = required(NAME_VAR)?;
    let user = required(USER_VAR)?;
    let invalid =
        |var: &'static str, reason: String| ConfigError::InvalidDatabasePart { var, reason };

    let port = match lookup(PORT_VAR)? {
        None => 5432,
        Some(port) => port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(PORT_VAR, format!("{port:?} is not a port number")))?,
    };
    let host = host.trim();
    // A bare IPv6 address needs brackets inside a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let mut url = url::Url::parse(&format!("postgres://{host}:{port}/"))
        .map_err(|e| invalid(HOST_VAR, format!("{host:?} is not a host name ({e})")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(HOST_VAR, format!("{host:?} is not a host name")));
    }
    url.set_username(user.trim())
        .map_err(|()| invalid(USER_VAR, "it cannot be put in a URL".into()))?;
    if let Some(password) = lookup(PASSWORD_VAR)? {
        // Not trimmed: a secret's spaces are part of it.
        url.set_password(Some(&password))
            .map_err(|()| invalid(PASSWORD_VAR, "it cannot be put in a URL".into()))?;
    }
    url.path_segments_mut()
        .map_err(|()| invalid(NAME_VAR, "it cannot be put in a URL".into()))?
        .clear()
        .push(name.trim());
    if let Some(mode) = lookup(SSLMODE_VAR)? {
        let mode = mode.trim().to_ascii_lowercase();
        const MODES: [&str; 6] = [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ];
        if !MODES.contains(&mode.as_str()) {
            return Err(invalid(
                SSLMODE_VAR,
                format!("{mode:?} is not one of {}", MODES.join(", ")),
            ));
        }
        url.query_pairs_mut().append_pair("sslmode", &mode);
    }
    // The CA bundle that verify-ca and verify-full check the server against (RDS's own CA).
    if let Some(path) = lookup(SSLROOTCERT_VAR)? {
        url.query_pairs_mut()
            .append_pair("sslrootcert", path.trim());
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(vars: &[(&'static str, &str)]) -> Result<String, ConfigError> {
        let map: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        url_from_parts(&|k| Ok(map.get(k).cloned()), HOST_VAR)
    }

    #[test]
    fn password_with_url_syntax_survives_a_round_trip() {
        let password = "p@ss:w/o%rd?#& x";
        let url = build(&[
            (HOST_VAR, "db.internal"),
            (NAME_VAR, "vega"),
            (USER_VAR, "vega_app"),
            (PASSWORD_VAR, password),
            (SSLMODE_VAR, "verify-full"),
            (SSLROOTCERT_VAR, "/etc/ssl/certs/rds-global-bundle.pem"),
        ])
        .unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        let decoded = percent_encoding::percent_decode_str(parsed.password().unwrap());
        assert_eq!(decoded.decode_utf8().unwrap(), password);
        assert_eq!(parsed.host_str(), Some("db.internal"));
        assert_eq!(parsed.port(), Some(5432));
        assert_eq!(parsed.path(), "/vega");
        let query: Vec<_> = parsed.query_pairs().collect();
        assert_eq!(query[0], ("sslmode".into(), "verify-full".into()));
        assert_eq!(
            query[1],
            (
                "sslrootcert".into(),
                "/etc/ssl/certs/rds-global-bundle.pem".into()
            )
        );
    }

    #[test]
    fn ipv6_host_and_explicit_port() {
        let url = build(&[
            (HOST_VAR, "::1"),
            (PORT_VAR, "6432"),
            (NAME_VAR, "vega"),
            (USER_VAR, "u"),
        ])
        .unwrap();
        assert_eq!(url, "postgres://u@[::1]:6432/vega");
    }

    #[test]
    fn missing_and_invalid_parts_are_named() {
        let err = build(&[(HOST_VAR, "db"), (USER_VAR, "u")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::MissingDatabasePart {
                var: NAME_VAR,
                set: HOST_VAR
            }
        );
        for (var, value) in [(PORT_VAR, "54x"), (PORT_VAR, "0"), (SSLMODE_VAR, "yes")] {
            let err = build(&[
                (HOST_VAR, "db"),
                (NAME_VAR, "v"),
                (USER_VAR, "u"),
                (var, value),
            ])
            .unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidDatabasePart { var: v, .. } if v == var),
                "{err}"
            );
        }
    }
}
