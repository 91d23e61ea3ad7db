//! `directory import` and `directory export`: the directory as JSON Lines, one
//! [`DirectoryLine`] per line. An import reads batches of [`BATCH_LINES`] lines, each checked as
//! the API checks a body and applied in one transaction by [`Store::import_batch`]; a line that
//! is not understood or breaks a rule is refused (its line number and why) and the rest goes in.
//! An export writes every row, tenants first, then end companies, agents and sessions, each in
//! keyset pages of [`EXPORT_PAGE`] rows read in one transaction, so neither holds the directory
//! in memory.

use std::{
    collections::HashSet,
    io::{BufRead, Write},
};

use super::{AgentEntry, DirectoryLine, EndCompanyEntry, SessionEntry, TenantEntry};
use crate::store::{BatchOutcome, ExportPage, ImportBatch, KindCounts, Store, StoreError};

/// Lines per transaction.
pub const BATCH_LINES: usize = 5_000;
/// A progress report every this many lines.
pub const PROGRESS_LINES: u64 = 100_000;
/// Rows per page of an export.
pub const EXPORT_PAGE: u32 = 10_000;

/// What an import did, so far or in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines read (blank lines and comments included).
    pub lines: u64,
    /// Lines refused before their kind was known: not JSON, not one key, an unknown kind.
    pub unparsed: u64,
    pub tenants: KindCounts,
    pub end_companies: KindCounts,
    pub agents: KindCounts,
    pub sessions: KindCounts,
    /// Live tokens revoked because their session closed or changed end company.
    pub tokens_revoked: u64,
}

impl ImportSummary {
    /// Refused lines, whatever the reason.
    pub fn refused(&self) -> u64 {
        self.unparsed + self.kinds().iter().map(|(_, c)| c.refused).sum::<u64>()
    }

    /// Rows written or found as they were.
    pub fn imported(&self) -> u64 {
        self.kinds()
            .iter()
            .map(|(_, c)| c.created + c.updated + c.unchanged)
            .sum()
    }

    /// Each kind's counts, in the order they are applied.
    pub fn kinds(&self) -> [(&'static str, KindCounts); 4] {
        [
            ("tenants", self.tenants),
            ("end companies", self.end_companies),
            ("agents", self.agents),
            ("sessions", self.sessions),
        ]
    }

    fn add(&mut self, outcome: &BatchOutcome) {
        self.tenants.add(&outcome.tenants);
        self.end_companies.add(&outcome.end_companies);
        self.agents.add(&outcome.agents);
        self.sessions.add(&outcome.sessions);
        self.tokens_revoked += outcome.tokens_revoked;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read (the batches before this line are imported).
    #[error("cannot read line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    /// The database failed a batch: it is rolled back, the batches before it are imported.
    #[error("the batch of lines {first} to {last} failed (rolled back; the lines before {first} are imported)")]
    Store {
        first: u64,
        last: u64,
        #[source]
        source: StoreError,
    },
}

/// A line and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: u64,
    pub reason: String,
}

/// Imports the JSON Lines of `input` into `store`. `refused` hears of each refused line, in line
/// order, as its batch ends; `progress` of the running totals every [`PROGRESS_LINES`] lines.
pub async fn import(
    store: &Store,
    mut input: impl BufRead,
    mut refused: impl FnMut(&Refusal),
    mut progress: impl FnMut(&ImportSummary),
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary::default();
    let mut batch = Batch::default();
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let line = summary.lines + 1;
        let read = input
            .read_until(b'\n', &mut buffer)
            .map_err(|source| ImportError::Read { line, source })?;
        if read == 0 {
            break;
        }
        summary.lines = line;
        if line % PROGRESS_LINES == 0 {
            progress(&summary);
        }
        let text = match std::str::from_utf8(&buffer) {
            Ok(text) => text.trim(),
            Err(_) => {
                summary.unparsed += 1;
                batch.refuse(line, "not UTF-8 text".to_owned());
                continue;
            }
        };
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let parsed = match DirectoryLine::parse(text) {
            Ok(parsed) => parsed,
            Err(reason) => {
                summary.unparsed += 1;
                batch.refuse(line, reason);
                continue;
            }
        };
        if batch.holds(&parsed) || batch.rows.len() + batch.refused.len() >= BATCH_LINES {
            batch.flush(store, &mut summary, &mut refused).await?;
        }
        batch.push(line, parsed, &mut summary);
    }
    batch.flush(store, &mut summary, &mut refused).await?;
    Ok(summary)
}

/// The lines of one transaction.
#[derive(Default)]
struct Batch {
    rows: ImportBatch,
    /// The first and last line of the batch that the database is to see.
    first_line: Option<u64>,
    last_line: u64,
    /// The keys in `rows`: a repeated key starts a new batch, so that a file applies line after
    /// line (one upsert statement cannot write a row twice).
    tenants: HashSet<String>,
    end_companies: HashSet<(String, String)>,
    agents: HashSet<i64>,
    sessions: HashSet<String>,
    /// Lines refused before the database saw them.
    refused: Vec<Refusal>,
}

impl Batch {
    fn holds(&self, line: &DirectoryLine) -> bool {
        match line {
            DirectoryLine::Tenant(t) => self.tenants.contains(&t.id),
            DirectoryLine::EndCompany(c) => self
                .end_companies
                .contains(&(c.tenant_id.clone(), c.id.clone())),
            DirectoryLine::Agent(a) => self.agents.contains(&a.id),
            DirectoryLine::Session(s) => self.sessions.contains(&s.id),
        }
    }

    fn refuse(&mut self, line: u64, reason: String) {
        self.refused.push(Refusal { line, reason });
    }

    /// Checks the entry as the API checks a body; a good one joins the batch.
    fn push(&mut self, line: u64, parsed: DirectoryLine, summary: &mut ImportSummary) {
        self.first_line.get_or_insert(line);
        self.last_line = line;
        let refused = match parsed {
            DirectoryLine::Tenant(t) => match t.check() {
                Ok(row) => {
                    self.tenants.insert(row.id.clone());
                    self.rows.tenants.push((line, row));
                    return;
                }
                Err(error) => (&mut summary.tenants, format!("tenant {:?}: {error}", t.id)),
            },
            DirectoryLine::EndCompany(c) => match c.check() {
                Ok(row) => {
                    self.end_companies
                        .insert((row.tenant_id.clone(), row.id.clone()));
                    self.rows.end_companies.push((line, row));
                    return;
                }
                Err(error) => (
                    &mut summary.end_companies,
                    format!("end company {:?}: {error}", c.id),
                ),
            },
            DirectoryLine::Agent(a) => match a.check() {
                Ok(row) => {
                    self.agents.insert(row.id);
                    self.rows.agents.push((line, row));
                    return;
                }
                Err(error) => (&mut summary.agents, format!("agent \"{}\": {error}", a.id)),
            },
            DirectoryLine::Session(s) => match s.check() {
                Ok(row) => {
                    self.sessions.insert(row.id.clone());
                    self.rows.sessions.push((line, row));
                    return;
                }
                Err(error) => (
                    &mut summary.sessions,
                    format!("session {:?}: {error}", s.id),
                ),
            },
        };
        let (counts, reason) = refused;
        counts.refused += 1;
        self.refuse(line, reason);
    }

    async fn flush(
        &mut self,
        store: &Store,
        summary: &mut ImportSummary,
        refused: &mut impl FnMut(&Refusal),
    ) -> Result<(), ImportError> {
        if let (false, Some(first)) = (self.rows.is_empty(), self.first_line) {
            let last = self.last_line;
            let outcome =
                store
                    .import_batch(&self.rows)
                    .await
                    .map_err(|source| ImportError::Store {
                        first,
                        last,
                        source,
                    })?;
            summary.add(&outcome);
            self.refused
                .extend(outcome.refused.into_iter().map(|r| Refusal {
                    line: r.line,
                    reason: format!("{} {:?}: {}", r.what, r.id, r.why),
                }));
        }
        self.refused.sort_by_key(|r| r.line);
        for refusal in self.refused.drain(..) {
            refused(&refusal);
        }
        *self = Self::default();
        Ok(())
    }
}

/// How many rows of each kind an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    pub tenants: u64,
    pub end_companies: u64,
    pub agents: u64,
    pub sessions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes every row of the directory to `output` as JSON Lines: tenants, end companies, agents,
/// sessions, each by id, page by page, all as of one moment (one read transaction).
pub async fn export(store: &Store, output: &mut impl Write) -> Result<ExportCounts, ExportError> {
    fn lines(
        output: &mut impl Write,
        rows: impl ExactSizeIterator<Item = DirectoryLine>,
    ) -> std::io::Result<u64> {
        let count = rows.len() as u64;
        for line in rows {
            serde_json::to_writer(&mut *output, &line)?;
            output.write_all(b"\n")?;
        }
        Ok(count)
    }
    let mut counts = ExportCounts::default();
    store
        .export_directory(EXPORT_PAGE, |page| {
            match page {
                ExportPage::Tenants(rows) => {
                    counts.tenants += lines(
                        output,
                        rows.iter()
                            .map(|r| DirectoryLine::Tenant(TenantEntry::of(r))),
                    )?;
                }
                ExportPage::EndCompanies(rows) => {
                    counts.end_companies += lines(
                        output,
                        rows.iter()
                            .map(|r| DirectoryLine::EndCompany(EndCompanyEntry::of(r))),
                    )?;
                }
                ExportPage::Agents(rows) => {
                    counts.agents += lines(
                        output,
                        rows.iter().map(|r| DirectoryLine::Agent(AgentEntry::of(r))),
                    )?;
                }
                ExportPage::Sessions(rows) => {
                    counts.sessions += lines(
                        output,
                        rows.iter()
                            .map(|r| DirectoryLine::Session(SessionEntry::of(r))),
                    )?;
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await??;
    output.flush()?;
    Ok(counts)
}
