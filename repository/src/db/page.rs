/// One page of a keyset-paginated list, newest (or worst) first.
///
/// Pages are read with a cursor taken from the last row of the previous page, never with an
/// offset: a page deep in the list costs the same as the first, and rows inserted between two
/// reads neither repeat nor go missing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Page<T, C> {
    /// The rows, in list order.
    pub items: Vec<T>,
    /// The cursor to pass for the next page; `None` on the last page.
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// Builds a page from up to `limit + 1` fetched rows: the extra row only signals that
    /// another page exists.
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: u64, cursor: impl Fn(&T) -> C) -> Self {
        let has_more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next = if has_more {
            rows.last().map(cursor)
        } else {
            None
        };
        Page { items: rows, next }
    }
}

/// The largest page a list method returns.
pub const MAX_PAGE_SIZE: u64 = 500;

/// The `LIMIT` clause of a list statement that fetches `rows` rows, written into the statement's
/// text rather than bound. Postgres plans a statement whose limit is a parameter afresh on
/// every execution: its generic plan is costed for an unknown limit, never beats the custom
/// plans, and so is never reused (~0.1 ms of planning per page, measured in vega-bench). The
/// limit is an integer the caller validated, so the text is safe, and the few sizes in use
/// give the driver's statement cache few shapes.
pub(crate) fn limit_clause(rows: u64) -> String {
    format!("LIMIT {rows}")
}

/// Checks a requested page size (1..=[`MAX_PAGE_SIZE`]).
pub(crate) fn page_size(limit: u64) -> crate::error::Result<u64> {
    if (1..=MAX_PAGE_SIZE).contains(&limit) {
        Ok(limit)
    } else {
        Err(crate::error::Error::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ))
    }
}
