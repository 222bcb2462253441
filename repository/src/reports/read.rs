//! Reading a SARIF 2.1.0 log as a stream: one result deserialized at a time by a seeded serde
//! visitor over the document, so memory is one result (and the runs' rules), never the log.
//!
//! A log is read twice from the spooled file. The first pass ([`runs`]) checks the version and
//! collects each run's tool, rules and `originalUriBaseIds` while skipping results (the JSON
//! is still checked), since a run's rules may come after its results. The second pass
//! ([`results`]) maps each result with its run's context. Either names what is wrong by its
//! JSON pointer (`/runs/0/results/17/locations/0`). The fields read are `wire.rs`'s; the
//! mapping of a result is `map.rs`'s.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::Error;
use crate::reports::map::{Mapped, map};
use crate::reports::wire::{ArtifactLocation, Run, SarifResult, Tool};

/// The only version read.
pub(crate) const VERSION: &str = "2.1.0";

/// What a pass does with the parts of a run.
enum Pass<'a> {
    Runs(Vec<Run>),
    Results {
        runs: &'a [Run],
        sink: &'a mut dyn FnMut(Mapped) -> crate::error::Result<()>,
    },
}

struct State<'a> {
    pass: Pass<'a>,
    version: Option<String>,
    saw_runs: bool,
    /// The deepest place reached, for naming a JSON syntax error.
    at: String,
    /// The error a seed raised (serde's own error type cannot carry ours).
    failure: Option<Error>,
    /// Results seen by pass one.
    results: u64,
}

impl State<'_> {
    fn fail<E: de::Error>(&mut self, error: Error) -> E {
        let message = error.to_string();
        self.failure = Some(error);
        E::custom(message)
    }
}

/// Pass one: checks the version and the JSON and returns each run's context, and how many
/// results the log has.
pub(crate) fn runs(reader: impl Read) -> crate::error::Result<(Vec<Run>, u64)> {
    let mut state = State {
        pass: Pass::Runs(Vec::new()),
        version: None,
        saw_runs: false,
        at: String::new(),
        failure: None,
        results: 0,
    };
    read(reader, &mut state)?;
    match state.version.as_deref() {
        Some(VERSION) => {}
        Some(other) => {
            return Err(Error::invalid(
                "/version",
                format!("must be \"{VERSION}\" (got \"{other}\")"),
            ));
        }
        None => return Err(Error::invalid("/version", "is required")),
    }
    if !state.saw_runs {
        return Err(Error::invalid("/runs", "is required"));
    }
    match state.pass {
        Pass::Runs(runs) => Ok((runs, state.results)),
        Pass::Results { .. } => Ok((Vec::new(), state.results)),
    }
}

/// Pass two: maps every result of the log, in order, into `sink`.
pub(crate) fn results(
    reader: impl Read,
    runs: &[Run],
    sink: &mut dyn FnMut(Mapped) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    let mut state = State {
        pass: Pass::Results { runs, sink },
        version: None,
        saw_runs: false,
        at: String::new(),
        failure: None,
        results: 0,
    };
    read(reader, &mut state)
}

fn read(reader: impl Read, state: &mut State<'_>) -> crate::error::Result<()> {
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 * 1024, reader));
    let outcome = LogSeed(state).deserialize(&mut de).and_then(|()| de.end());
    match outcome {
        Ok(()) => Ok(()),
        Err(err) => Err(state.failure.take().unwrap_or_else(|| {
            let at = if state.at.is_empty() { "/" } else { &state.at };
            if err.is_io() {
                Error::invalid(at, format!("could not be read: {err}"))
            } else {
                Error::invalid(at, format!("is not a SARIF log: {err}"))
            }
        })),
    }
}

/// Deserializes a `T` at `at`, naming a bad field by its pointer below `at`.
struct Tracked<'s, 'a, T> {
    state: &'s mut State<'a>,
    at: String,
    _t: std::marker::PhantomData<T>,
}

impl<'s, 'a, T> Tracked<'s, 'a, T> {
    fn new(state: &'s mut State<'a>, at: String) -> Self {
        Self {
            state,
            at,
            _t: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Tracked<'_, '_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let mut pointer = self.at.clone();
            for segment in err.path().iter() {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                    Segment::Map { key } => {
                        pointer.push('/');
                        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    }
                    Segment::Enum { variant } => pointer.push_str(&format!("/{variant}")),
                    Segment::Unknown => {}
                }
            }
            let message = err.inner().to_string();
            // Keep serde's "at line L column C" out of the field's message: the pointer says where.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned();
            self.state.fail(Error::invalid(&pointer, message))
        })
    }
}

struct LogSeed<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for LogSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LogSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SARIF log (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "version" => {
                    state.version =
                        Some(map.next_value_seed(Tracked::new(state, "/version".into()))?);
                }
                "runs" => {
                    state.saw_runs = true;
                    state.at = "/runs".into();
                    map.next_value_seed(RunsSeed(state))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct RunsSeed<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for RunsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RunsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of runs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        let mut index = 0;
        loop {
            state.at = format!("/runs/{index}");
            if let Pass::Runs(runs) = &mut state.pass {
                runs.push(Run::default());
            }
            if seq.next_element_seed(RunSeed { state, index })?.is_none() {
                if let Pass::Runs(runs) = &mut state.pass {
                    runs.pop();
                }
                return Ok(());
            }
            index += 1;
        }
    }
}

struct RunSeed<'s, 'a> {
    state: &'s mut State<'a>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for RunSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RunSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a run (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (state, i) = (self.state, self.index);
        let mut saw_tool = false;
        while let Some(key) = map.next_key::<String>()? {
            let collecting = matches!(state.pass, Pass::Runs(_));
            match key.as_str() {
                "tool" if collecting => {
                    saw_tool = true;
                    let tool: Tool =
                        map.next_value_seed(Tracked::new(state, format!("/runs/{i}/tool")))?;
                    if let Pass::Runs(runs) = &mut state.pass
                        && let Some(run) = runs.last_mut()
                    {
                        run.by_id = tool
                            .driver
                            .rules
                            .iter()
                            .enumerate()
                            .filter_map(|(k, r)| Some((r.id.clone()?, k)))
                            .collect();
                        run.tool = tool;
                    }
                }
                "originalUriBaseIds" if collecting => {
                    let bases: HashMap<String, ArtifactLocation> = map.next_value_seed(
                        Tracked::new(state, format!("/runs/{i}/originalUriBaseIds")),
                    )?;
                    if let Pass::Runs(runs) = &mut state.pass
                        && let Some(run) = runs.last_mut()
                    {
                        run.bases = bases;
                    }
                }
                "results" => {
                    map.next_value_seed(ResultsSeed { state, run: i })?;
                }
                _ => {
                    if key == "tool" {
                        saw_tool = true;
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
            state.at = format!("/runs/{i}");
        }
        if !saw_tool {
            return Err(state.fail(Error::invalid(&format!("/runs/{i}/tool"), "is required")));
        }
        Ok(())
    }
}

struct ResultsSeed<'s, 'a> {
    state: &'s mut State<'a>,
    run: usize,
}

impl<'de> DeserializeSeed<'de> for ResultsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResultsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of results, or null")
    }

    /// `"results": null`: the tool did not run; nothing to ingest.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (state, run) = (self.state, self.run);
        let mut index = 0usize;
        loop {
            let at = format!("/runs/{run}/results/{index}");
            state.at.clone_from(&at);
            if matches!(state.pass, Pass::Runs(_)) {
                // Pass one checks the JSON only (the rules may come later).
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                state.results += 1;
                index += 1;
                continue;
            }
            let Some(result) =
                seq.next_element_seed(Tracked::<SarifResult>::new(state, at.clone()))?
            else {
                return Ok(());
            };
            let Pass::Results { runs, sink } = &mut state.pass else {
                return Ok(());
            };
            let mapped = runs
                .get(run)
                .ok_or_else(|| Error::invalid(&at, "belongs to no run of the first pass"))
                .and_then(|r| map(r, run, index, &at, result))
                .and_then(&mut **sink);
            if let Err(err) = mapped {
                return Err(state.fail(err));
            }
            index += 1;
        }
    }
}
