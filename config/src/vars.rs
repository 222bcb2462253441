//! Parsing of tuning variables: durations as `humantime` spans (`30s`, `1m 30s`, `250ms`) and
//! whole numbers in a range. A timeout of zero would mean "no bound" to the servers and SDKs
//! these settings reach, so it is refused rather than silently unbounded.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::ConfigError;

/// The longest any timeout may be.
pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

/// `var` as a duration in (0, `max`], or `default` when unset.
pub(crate) fn duration(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    var: &'static str,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = lookup(var)? else {
        return Ok(default);
    };
    let reason = match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() => "must be longer than zero".to_owned(),
        Ok(d) if d > max => format!("must be at most {}", humantime::format_duration(max)),
        Ok(d) => return Ok(d),
        Err(_) => "is not a duration such as `30s` or `250ms`".to_owned(),
    };
    Err(ConfigError::InvalidSetting { var, value, reason })
}

/// `var` as a whole number in `range`, or `default` when unset.
pub(crate) fn number(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    var: &'static str,
    default: u32,
    range: RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    let Some(value) = lookup(var)? else {
        return Ok(default);
    };
    match value.trim().parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::InvalidSetting {
            var,
            value,
            reason: format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}
