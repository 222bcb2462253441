use std::path::PathBuf;

use crate::{ConfigError, Source};

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
    },
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
                Ok(BlobSettings::S3 { bucket, prefix })
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
            BlobSettings::S3 { bucket, prefix } => tracing::info!(
                backend = "s3",
                bucket = %bucket,
                prefix = prefix.as_deref().unwrap_or(""),
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
                prefix: Some("env/dev".into())
            }
        );
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
