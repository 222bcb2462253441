use std::path::PathBuf;
use std::time::Duration;

use crate::{ConfigError, Source, vars};

/// The default root of the filesystem blob store.
pub const DEFAULT_BLOB_DIR: &str = ".vega/blobs";

/// Where large objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobSettings {
    /// A directory on local disk: the embedded default.
    Fs {
        /// The root directory.
        root: PathBuf,
        /// Where [`BlobSettings::Fs::root`] came from.
        root_source: Source,
    },
    /// An S3 bucket. Region, endpoint and credentials come from aws-config's default chain
    /// (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_PROFILE`, instance roles, ...).
    S3 {
        /// The bucket.
        bucket: String,
        /// Optional key prefix shared by every object, without a trailing `/`.
        prefix: Option<String>,
        /// The bound on every S3 call.
        timeouts: S3Timeouts,
        /// Where streamed uploads are spooled before they go up (`VEGA_SPOOL_DIR`, default
        /// `vega-spool` in the system temp directory). The store owns it: files no live
        /// process holds are removed at start-up.
        spool_dir: PathBuf,
    },
}

/// How long S3 calls may take, cleanup calls included. An upload's attempt may take `read`
/// plus the time its body takes at 1 MiB/s (shared by the parts in flight), so a 16 MiB part
/// still goes up over a slow link, while a body that stops moving fails after `read` (the
/// SDK's stalled-stream protection). With the defaults, an object of up to 16 MiB sent to an
/// endpoint that never answers fails within a minute, every attempt included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Timeouts {
    /// Opening a connection, TLS included (`VEGA_S3_CONNECT_TIMEOUT`, default 5 s).
    pub connect: Duration,
    /// Waiting for the response to a request (`VEGA_S3_READ_TIMEOUT`, default 10 s). An
    /// upload gets this plus the time its body takes at 1 MiB/s, within `attempt`.
    pub read: Duration,
    /// One attempt of a call, an upload's body included (`VEGA_S3_ATTEMPT_TIMEOUT`, default
    /// 120 s).
    pub attempt: Duration,
    /// A whole call: every attempt and the backoff between them (`VEGA_S3_OPERATION_TIMEOUT`,
    /// default 300 s).
    pub operation: Duration,
    /// Attempts per call, the first included (`VEGA_S3_MAX_ATTEMPTS`, default 3).
    pub max_attempts: u32,
}

impl Default for S3Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(10),
            attempt: Duration::from_secs(120),
            operation: Duration::from_secs(300),
            max_attempts: 3,
        }
    }
}

impl S3Timeouts {
    fn from_lookup(
        lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let d = Self::default();
        let duration = |var, default| vars::duration(lookup, var, default, vars::DAY);
        Ok(Self {
            connect: duration("VEGA_S3_CONNECT_TIMEOUT", d.connect)?,
            read: duration("VEGA_S3_READ_TIMEOUT", d.read)?,
            attempt: duration("VEGA_S3_ATTEMPT_TIMEOUT", d.attempt)?,
            operation: duration("VEGA_S3_OPERATION_TIMEOUT", d.operation)?,
            max_attempts: vars::number(lookup, "VEGA_S3_MAX_ATTEMPTS", d.max_attempts, 1..=10)?,
        })
    }
}

/// The default spool directory: `vega-spool` in the system temp directory.
pub fn default_spool_dir() -> PathBuf {
    std::env::temp_dir().join("vega-spool")
}

impl BlobSettings {
    pub(crate) fn from_lookup(
        lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let backend = lookup("VEGA_BLOB_BACKEND")?;
        match backend.as_deref().map(str::trim) {
            None | Some("fs") => {
                let (root, root_source) = match lookup("VEGA_BLOB_DIR")? {
                    Some(dir) => (PathBuf::from(dir), Source::Env("VEGA_BLOB_DIR")),
                    None => (PathBuf::from(DEFAULT_BLOB_DIR), Source::Default),
                };
                Ok(BlobSettings::Fs { root, root_source })
            }
            Some("s3") => {
                let bucket = lookup("VEGA_S3_BUCKET")?.ok_or(ConfigError::MissingBucket)?;
                let prefix = lookup("VEGA_S3_PREFIX")?
                    .map(|p| validate_prefix(&p))
                    .transpose()?;
                let spool_dir = lookup("VEGA_SPOOL_DIR")?
                    .map(PathBuf::from)
                    .unwrap_or_else(default_spool_dir);
                Ok(BlobSettings::S3 {
                    bucket,
                    prefix,
                    timeouts: S3Timeouts::from_lookup(lookup)?,
                    spool_dir,
                })
            }
            Some(_) => Err(ConfigError::UnknownBlobBackend {
                value: backend.unwrap_or_default(),
            }),
        }
    }

    pub(crate) fn log_effective(&self) {
        match self {
            BlobSettings::Fs { root, root_source } => tracing::info!(
                backend = "fs",
                root = %root.display(),
                root_source = %root_source,
                "blob settings"
            ),
            BlobSettings::S3 {
                bucket,
                prefix,
                timeouts,
                spool_dir,
            } => tracing::info!(
                backend = "s3",
                bucket = %bucket,
                prefix = prefix.as_deref().unwrap_or(""),
                timeouts = ?timeouts,
                spool_dir = %spool_dir.display(),
                "blob settings"
            ),
        }
    }
}

fn validate_prefix(prefix: &str) -> Result<String, ConfigError> {
    let ok = prefix.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    if ok {
        Ok(prefix.to_owned())
    } else {
        Err(ConfigError::InvalidPrefix {
            value: prefix.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn blob(vars: &[(&'static str, &str)]) -> Result<BlobSettings, ConfigError> {
        let map: HashMap<&str, String> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        BlobSettings::from_lookup(&|k| Ok(map.get(k).cloned()))
    }

    #[test]
    fn defaults_to_local_directory() {
        assert_eq!(
            blob(&[]).unwrap(),
            BlobSettings::Fs {
                root: PathBuf::from(DEFAULT_BLOB_DIR),
                root_source: Source::Default
            }
        );
    }

    #[test]
    fn s3_needs_a_bucket() {
        let err = blob(&[("VEGA_BLOB_BACKEND", "s3")]).unwrap_err();
        assert_eq!(err, ConfigError::MissingBucket);
        assert!(err.to_string().contains("VEGA_S3_BUCKET"));
        let ok = blob(&[
            ("VEGA_BLOB_BACKEND", "s3"),
            ("VEGA_S3_BUCKET", "vega-dev"),
            ("VEGA_S3_PREFIX", "env/dev"),
        ])
        .unwrap();
        assert_eq!(
            ok,
            BlobSettings::S3 {
                bucket: "vega-dev".into(),
                prefix: Some("env/dev".into()),
                timeouts: S3Timeouts::default(),
                spool_dir: default_spool_dir(),
            }
        );
    }

    #[test]
    fn s3_timeouts_are_read_and_bounded() {
        let s3 = [("VEGA_BLOB_BACKEND", "s3"), ("VEGA_S3_BUCKET", "b")];
        let with = |extra: &[(&'static str, &str)]| blob(&[&s3[..], extra].concat());
        let Ok(BlobSettings::S3 {
            timeouts,
            spool_dir,
            ..
        }) = with(&[
            ("VEGA_S3_READ_TIMEOUT", "2s"),
            ("VEGA_S3_MAX_ATTEMPTS", "1"),
            ("VEGA_SPOOL_DIR", "/var/spool/vega"),
        ])
        else {
            panic!("s3 settings expected");
        };
        assert_eq!(timeouts.read, Duration::from_secs(2));
        assert_eq!(timeouts.max_attempts, 1);
        assert_eq!(timeouts.operation, S3Timeouts::default().operation);
        assert_eq!(spool_dir, PathBuf::from("/var/spool/vega"));
        for (var, value) in [
            ("VEGA_S3_CONNECT_TIMEOUT", "0s"),
            ("VEGA_S3_ATTEMPT_TIMEOUT", "soon"),
            ("VEGA_S3_OPERATION_TIMEOUT", "2d"),
            ("VEGA_S3_MAX_ATTEMPTS", "0"),
        ] {
            let err = with(&[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn bad_blob_settings_are_named() {
        let err = blob(&[("VEGA_BLOB_BACKEND", "gcs")]).unwrap_err();
        assert!(err.to_string().contains("VEGA_BLOB_BACKEND"));
        for prefix in ["/abs", "trailing/", "a//b", "../up", "sp ace"] {
            let err = blob(&[
                ("VEGA_BLOB_BACKEND", "s3"),
                ("VEGA_S3_BUCKET", "b"),
                ("VEGA_S3_PREFIX", prefix),
            ])
            .unwrap_err();
            assert!(err.to_string().contains("VEGA_S3_PREFIX"), "{prefix}");
        }
    }
}
