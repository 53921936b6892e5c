//! Tags: the paginated tag list, with caps on page size, page count and tag count,
//! and loop detection over every page URL seen.

use std::collections::HashSet;

use super::challenge::Scope;
use super::{responses, Client, Operation, MAX_TAGS, MAX_TAG_PAGES, MAX_TAG_PAGE_BYTES};
use crate::error::{Error, Result};

#[derive(serde::Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Client {
    /// Every tag of `repository`, following `Link` pagination (at most
    /// [`MAX_TAG_PAGES`] pages of at most [`MAX_TAG_PAGE_BYTES`], [`MAX_TAGS`] tags; a
    /// page URL seen before is an error). A repository that does not exist has none.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        let op = Operation::GetTags;
        let what = format!("{}/{}", self.inner.registry, repository);
        let scopes = [Scope::pull(repository)];
        let mut url = self.url(&format!("/v2/{repository}/tags/list?n=1000"));
        let mut seen: HashSet<String> = HashSet::new();
        let mut tags = Vec::new();
        loop {
            if seen.len() >= MAX_TAG_PAGES {
                return Err(limit(op, &what, "tag-list pages", MAX_TAG_PAGES));
            }
            if !seen.insert(url.clone()) {
                return Err(Error::Limit {
                    operation: op.label(),
                    reference: what,
                    what: "tag-list pages (a page links back to a page already read)".into(),
                    limit: seen.len() as u64,
                });
            }
            let u = url.clone();
            let page = self
                .request_body(
                    op,
                    &what,
                    &scopes,
                    MAX_TAG_PAGE_BYTES,
                    "tag-list page",
                    &|h| h.get(&u),
                )
                .await;
            let answer = match page {
                Ok(p) => p,
                Err(e) if e.is_not_found() && tags.is_empty() => return Ok(tags),
                Err(e) => return Err(e),
            };
            let list: TagList =
                serde_json::from_slice(&answer.body).map_err(|e| Error::BadResponse {
                    operation: op.label(),
                    reference: what.clone(),
                    status: answer.status,
                    reason: format!("tag list is not JSON: {e}"),
                    transient: true,
                })?;
            tags.extend(list.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(limit(op, &what, "tags", MAX_TAGS));
            }
            match responses::next_link(&answer.headers) {
                Some(next) => url = self.resolve_location(&next),
                None => return Ok(tags),
            }
        }
    }
}

fn limit(op: Operation, what: &str, kind: &str, cap: usize) -> Error {
    Error::Limit {
        operation: op.label(),
        reference: what.to_string(),
        what: kind.to_string(),
        limit: cap as u64,
    }
}
