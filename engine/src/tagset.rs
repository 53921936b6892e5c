//! Tag filters: which tags of a repository a tag set (Terraform's `imagesync_tags`, the
//! controller's `ImageSyncSet`) takes.
//!
//! A [`TagFilter`] is compiled once ([`TagFilter::compile`], which checks every field and
//! names the one that is wrong) and then applied to a tag list
//! ([`CompiledFilter::select`]). A tag is selected when all the filters that are set
//! agree:
//!
//! - `include`: a regular expression (Rust `regex` syntax) the **whole** tag must match
//!   (it is anchored: `1\.2.*` does not match `v1.2.0`);
//! - `exclude`: a regular expression the whole tag must not match;
//! - `semver`: a version constraint such as `>=1.25, <2`, with the `semver` crate's
//!   (Cargo's) rules: a comparator without an operator is `^` (`1.25` is `>=1.25.0,
//!   <2.0.0`), and a pre-release such as `1.26.0-rc.1` only matches a constraint that
//!   names a pre-release of the same `major.minor.patch` (`>=1.26.0-rc.0`);
//! - `latest = N`: of the tags the other filters keep, the N highest versions.
//!
//! Which tags are versions (for `semver` and `latest`; the regular expressions see every
//! tag as it is):
//!
//! - a strict semantic version `MAJOR.MINOR.PATCH[-PRERELEASE]`, e.g. `1.25.3` or
//!   `1.26.0-rc.1` (no leading zeros, as semver says);
//! - the same with one leading `v`: `v1.25.3`;
//! - `MAJOR.MINOR` (or `vMAJOR.MINOR`), two numbers and nothing else, taken as
//!   `MAJOR.MINOR.0`: `1.25` is 1.25.0;
//! - anything else (`latest`, `1`, `1.25-alpine`, `1.25.3.4`, `20240101`, `V1.2.3`) is
//!   not a version, and never matches a `semver` or `latest` filter.
//!
//! `latest` alone ranks every version, pre-releases included; add `semver = "*"` to rank
//! releases only. Two tags of the same version (`1.25.0` and `v1.25.0`, or `1.25` and
//! `1.25.0`) count as two; ties are broken by the tag, in byte order.
//!
//! Order of the result: without `latest`, the tags in byte order; with `latest`, the
//! highest version first. Duplicate tags in the input appear once.
//!
//! Every field comes from tenants' objects and Terraform attributes, so it is capped:
//! patterns and constraints at [`MAX_PATTERN_LEN`] characters, compiled expressions at
//! [`REGEX_SIZE_LIMIT`] bytes (a huge repetition such as `(a{1000}){1000}` is refused
//! when compiled, in milliseconds), `latest` at [`MAX_LATEST`]. Matching itself is linear
//! in the tag's length (the `regex` crate has no backtracking). Unicode classes are large
//! (`\w{30}` is over the limit); tags are ASCII, so `[A-Za-z0-9_]{30}` or `(?-u:\w){30}`
//! say the same in little space.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use regex::{Regex, RegexBuilder};
use semver::{Version, VersionReq};

/// The longest `include`, `exclude` or `semver` value accepted, in characters.
pub const MAX_PATTERN_LEN: usize = 1024;
/// The most memory one compiled regular expression (and its lazy DFA cache) may take.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The deepest nesting of groups and repetitions a regular expression may have.
pub const REGEX_NEST_LIMIT: u32 = 64;
/// The highest `latest` accepted.
pub const MAX_LATEST: u32 = 1000;

/// Which tags of a repository to take. Every field is optional; none set takes every tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// A regular expression the whole tag must match.
    pub include: Option<String>,
    /// A regular expression the whole tag must not match.
    pub exclude: Option<String>,
    /// A version constraint, e.g. `>=1.25, <2`; tags that are not versions never match.
    pub semver: Option<String>,
    /// Keep only the highest N versions (1 to [`MAX_LATEST`]); tags that are not versions
    /// never match.
    pub latest: Option<u32>,
}

/// The field of a [`TagFilter`] an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterField {
    /// `include`.
    Include,
    /// `exclude`.
    Exclude,
    /// `semver`.
    Semver,
    /// `latest`.
    Latest,
}

impl FilterField {
    /// The field's name, as Terraform and the CRD spell it.
    pub fn name(self) -> &'static str {
        match self {
            FilterField::Include => "include",
            FilterField::Exclude => "exclude",
            FilterField::Semver => "semver",
            FilterField::Latest => "latest",
        }
    }
}

impl std::fmt::Display for FilterField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A field of a [`TagFilter`] that cannot be used, and why.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// `include`, `exclude` or `semver` is empty.
    #[error("{field}: the value is empty; leave {field} unset instead")]
    Empty {
        /// The field.
        field: FilterField,
    },
    /// `include`, `exclude` or `semver` is longer than [`MAX_PATTERN_LEN`].
    #[error("{field}: the value is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// The field.
        field: FilterField,
        /// Its length in characters.
        len: usize,
        /// [`MAX_PATTERN_LEN`].
        max: usize,
    },
    /// `include` or `exclude` is not a regular expression the engine accepts.
    #[error("{field}: not a usable regular expression (Rust regex syntax, matched against the whole tag): {reason}")]
    Regex {
        /// The field.
        field: FilterField,
        /// What the regex compiler said (syntax error, or the size or nesting limit).
        reason: String,
    },
    /// `semver` is not a version constraint.
    #[error("semver: {value:?} is not a version constraint such as \">=1.25, <2\": {reason}")]
    Semver {
        /// The value (at most 80 characters of it).
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// `latest` is out of range.
    #[error("latest: must be between 1 and {max}, not {value}")]
    Latest {
        /// The value.
        value: u32,
        /// [`MAX_LATEST`].
        max: u32,
    },
}

impl FilterError {
    /// The field the error is about (a Terraform attribute, a CRD field).
    pub fn field(&self) -> FilterField {
        match self {
            FilterError::Empty { field }
            | FilterError::TooLong { field, .. }
            | FilterError::Regex { field, .. } => *field,
            FilterError::Semver { .. } => FilterField::Semver,
            FilterError::Latest { .. } => FilterField::Latest,
        }
    }
}

/// A checked [`TagFilter`], ready to apply.
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    include: Option<Regex>,
    exclude: Option<Regex>,
    semver: Option<VersionReq>,
    latest: Option<usize>,
}

impl TagFilter {
    /// Checks every field; the error names the first one that cannot be used.
    pub fn compile(&self) -> Result<CompiledFilter, FilterError> {
        let include = self
            .include
            .as_deref()
            .map(|p| compile_regex(FilterField::Include, p))
            .transpose()?;
        let exclude = self
            .exclude
            .as_deref()
            .map(|p| compile_regex(FilterField::Exclude, p))
            .transpose()?;
        let semver = self.semver.as_deref().map(parse_req).transpose()?;
        let latest = match self.latest {
            Some(n) if n == 0 || n > MAX_LATEST => {
                return Err(FilterError::Latest {
                    value: n,
                    max: MAX_LATEST,
                })
            }
            Some(n) => Some(n as usize),
            None => None,
        };
        Ok(CompiledFilter {
            include,
            exclude,
            semver,
            latest,
        })
    }
}

fn check_len(field: FilterField, value: &str) -> Result<(), FilterError> {
    if value.is_empty() {
        return Err(FilterError::Empty { field });
    }
    let len = value.chars().count();
    if len > MAX_PATTERN_LEN {
        return Err(FilterError::TooLong {
            field,
            len,
            max: MAX_PATTERN_LEN,
        });
    }
    Ok(())
}

/// The pattern is compiled on its own first, so that one which is not a regular
/// expression by itself (`a)|(b`) cannot close the anchoring group and escape it.
fn compile_regex(field: FilterField, pattern: &str) -> Result<Regex, FilterError> {
    check_len(field, pattern)?;
    let build = |p: &str| {
        RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(REGEX_NEST_LIMIT)
            .build()
            .map_err(|e| FilterError::Regex {
                field,
                reason: e.to_string(),
            })
    };
    build(pattern)?;
    build(&format!("^(?:{pattern})$"))
}

fn parse_req(value: &str) -> Result<VersionReq, FilterError> {
    check_len(FilterField::Semver, value)?;
    VersionReq::parse(value).map_err(|e| FilterError::Semver {
        value: value.chars().take(80).collect(),
        reason: e.to_string(),
    })
}

/// The version a tag stands for under the rules of this module, if any.
pub fn tag_version(tag: &str) -> Option<Version> {
    let bare = tag.strip_prefix('v').unwrap_or(tag);
    if let Ok(v) = Version::parse(bare) {
        return Some(v);
    }
    let (major, minor) = bare.split_once('.')?;
    Some(Version::new(number(major)?, number(minor)?, 0))
}

/// A semver numeric identifier: digits, no leading zero.
fn number(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

impl CompiledFilter {
    /// Whether `tag` passes `include`, `exclude` and `semver` (not `latest`, which
    /// depends on the other tags).
    pub fn matches(&self, tag: &str) -> bool {
        self.version_if_matches(tag).is_some()
    }

    /// `Some` when the tag passes; with a version filter set, the tag's version.
    fn version_if_matches(&self, tag: &str) -> Option<Option<Version>> {
        if self.include.as_ref().is_some_and(|r| !r.is_match(tag)) {
            return None;
        }
        if self.exclude.as_ref().is_some_and(|r| r.is_match(tag)) {
            return None;
        }
        if self.semver.is_none() && self.latest.is_none() {
            return Some(None);
        }
        let version = tag_version(tag)?;
        if self.semver.as_ref().is_some_and(|r| !r.matches(&version)) {
            return None;
        }
        Some(Some(version))
    }

    /// The tags of `tags` the filter takes, each once: in byte order, or with `latest`
    /// the highest N versions, highest first (ties in byte order of the tag).
    pub fn select(&self, tags: &[String]) -> Vec<String> {
        let unique: BTreeSet<&str> = tags.iter().map(String::as_str).collect();
        let Some(n) = self.latest else {
            return unique
                .into_iter()
                .filter(|t| self.matches(t))
                .map(str::to_string)
                .collect();
        };
        let mut versions: Vec<(Version, &str)> = unique
            .into_iter()
            .filter_map(|t| self.version_if_matches(t).flatten().map(|v| (v, t)))
            .collect();
        versions.sort_by(|(va, ta), (vb, tb)| match vb.cmp(va) {
            Ordering::Equal => ta.cmp(tb),
            other => other,
        });
        versions
            .into_iter()
            .take(n)
            .map(|(_, t)| t.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn filter(
        include: Option<&str>,
        exclude: Option<&str>,
        semver: Option<&str>,
        latest: Option<u32>,
    ) -> TagFilter {
        TagFilter {
            include: include.map(str::to_string),
            exclude: exclude.map(str::to_string),
            semver: semver.map(str::to_string),
            latest,
        }
    }

    fn select(f: TagFilter, input: &[&str]) -> Vec<String> {
        f.compile().unwrap().select(&tags(input))
    }

    const REPO: &[&str] = &[
        "latest",
        "1.24.0",
        "1.25.0",
        "v1.25.1",
        "1.25",
        "1.26.0-rc.1",
        "1.26.0",
        "1.26.0-alpine",
        "2.0.0",
        "1.25-alpine",
        "01.2.3",
        "1",
        "sha256-abc.sig",
    ];

    #[test]
    fn no_filter_takes_every_tag_once_in_byte_order() {
        let got = select(TagFilter::default(), &["b", "a", "b", "C"]);
        assert_eq!(got, tags(&["C", "a", "b"]));
    }

    #[test]
    fn include_and_exclude_match_the_whole_tag() {
        // Anchored: "1\.25" does not take "1.25.0" or "v1.25.1".
        assert_eq!(
            select(filter(Some(r"1\.25"), None, None, None), REPO),
            tags(&["1.25"])
        );
        let got = select(
            filter(Some(r"v?1\.2[56].*"), Some(".*-.*"), None, None),
            REPO,
        );
        assert_eq!(got, tags(&["1.25", "1.25.0", "1.26.0", "v1.25.1"]));
        // An alternation stays inside the anchors.
        let got = select(filter(Some("latest|2.0.0"), None, None, None), REPO);
        assert_eq!(got, tags(&["2.0.0", "latest"]));
        let got = select(
            filter(None, Some(r"sha256-.*|latest|.*\..*"), None, None),
            REPO,
        );
        assert_eq!(got, tags(&["1"]));
    }

    #[test]
    fn semver_takes_versions_only_with_the_crate_rules() {
        let got = select(filter(None, None, Some(">=1.25, <2"), None), REPO);
        // 1.26.0-rc.1 is a pre-release: a constraint without one does not take it.
        // 1.26.0-alpine is a pre-release too; 1.25-alpine, 01.2.3 and 1 are not versions.
        assert_eq!(got, tags(&["1.25", "1.25.0", "1.26.0", "v1.25.1"]));
        let got = select(filter(None, None, Some(">=1.26.0-rc.0"), None), REPO);
        // "alpine" sorts before "rc.0": 1.26.0-alpine is below the constraint.
        assert_eq!(got, tags(&["1.26.0", "1.26.0-rc.1", "2.0.0"]));
        // A bare version is a caret requirement.
        let got = select(filter(None, None, Some("1.24"), None), REPO);
        assert_eq!(
            got,
            tags(&["1.24.0", "1.25", "1.25.0", "1.26.0", "v1.25.1"])
        );
    }

    #[test]
    fn which_tags_are_versions() {
        assert_eq!(tag_version("1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(tag_version("v0.10"), Some(Version::new(0, 10, 0)));
        assert!(tag_version("1.2.3-rc.1").is_some_and(|v| !v.pre.is_empty()));
        for not in [
            "latest",
            "1",
            "v1",
            "1.2-alpine",
            "1.2.3.4",
            "01.2",
            "1.02",
            "V1.2.3",
            "vv1.2.3",
            "1.",
            ".1",
            "",
            "20240101",
        ] {
            assert_eq!(tag_version(not), None, "{not}");
        }
    }

    #[test]
    fn latest_keeps_the_highest_versions_highest_first() {
        let got = select(filter(None, None, None, Some(3)), REPO);
        // Pre-releases count without a semver constraint; 2.0.0 > 1.26.0 > its pre-releases.
        assert_eq!(got, tags(&["2.0.0", "1.26.0", "1.26.0-rc.1"]));
        let got = select(filter(None, None, Some("*"), Some(3)), REPO);
        assert_eq!(got, tags(&["2.0.0", "1.26.0", "v1.25.1"]));
        let got = select(filter(None, None, Some("<2"), Some(2)), REPO);
        assert_eq!(got, tags(&["1.26.0", "v1.25.1"]));
        // The same version twice: both count, tie broken by the tag.
        let got = select(
            filter(None, None, None, Some(2)),
            &["v1.0.0", "1.0", "1.0.0"],
        );
        assert_eq!(got, tags(&["1.0", "1.0.0"]));
        // Fewer versions than N: all of them; non-versions never.
        let got = select(
            filter(Some(".*"), None, None, Some(1000)),
            &["latest", "1.0.0"],
        );
        assert_eq!(got, tags(&["1.0.0"]));
    }

    #[test]
    fn every_filter_together() {
        let f = filter(
            Some(r"v?\d+\.\d+(\.\d+)?"),
            Some(r"2\..*"),
            Some(">=1.25"),
            Some(2),
        );
        assert_eq!(select(f, REPO), tags(&["1.26.0", "v1.25.1"]));
    }

    fn error(f: TagFilter) -> FilterError {
        f.compile().unwrap_err()
    }

    #[test]
    fn invalid_fields_are_named() {
        let e = error(filter(Some("(unclosed"), None, None, None));
        assert_eq!(e.field(), FilterField::Include);
        assert!(
            e.to_string()
                .starts_with("include: not a usable regular expression"),
            "{e}"
        );
        let e = error(filter(None, Some("[z-a]"), None, None));
        assert_eq!(e.field(), FilterField::Exclude);
        assert!(e.to_string().starts_with("exclude: "), "{e}");
        let e = error(filter(None, None, Some(">=banana"), None));
        assert_eq!(e.field(), FilterField::Semver);
        assert!(e.to_string().contains("not a version constraint"), "{e}");
        for n in [0, MAX_LATEST + 1] {
            let e = error(filter(None, None, None, Some(n)));
            assert_eq!(e.field(), FilterField::Latest);
            assert_eq!(
                e.to_string(),
                format!("latest: must be between 1 and 1000, not {n}")
            );
        }
        let e = error(filter(Some(""), None, None, None));
        assert_eq!(
            e.to_string(),
            "include: the value is empty; leave include unset instead"
        );
        let e = error(filter(None, None, Some(""), None));
        assert_eq!(e.field(), FilterField::Semver);
        // A pattern that is not a regular expression on its own cannot close the
        // anchoring group ("^(?:a)|(b)$" would take every tag starting with "a").
        let e = error(filter(Some("a)|(b"), None, None, None));
        assert_eq!(e.field(), FilterField::Include);
        // The first bad field is reported, in field order.
        let e = error(filter(Some("ok"), Some("("), Some("x"), Some(0)));
        assert_eq!(e.field(), FilterField::Exclude);
    }

    /// Hostile: a tenant's pattern that would compile to gigabytes (a huge nested
    /// repetition) is refused, and quickly; so are overlong values and deep nesting.
    #[test]
    fn hostile_patterns_are_refused_quickly() {
        for pattern in [
            "(a{1000}){1000}",
            r"(\w{1000}){1000}",
            "((((x{100}){100}){100}){100})",
        ] {
            let start = Instant::now();
            let e = error(filter(Some(pattern), None, None, None));
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{pattern}: {:?}",
                start.elapsed()
            );
            assert_eq!(e.field(), FilterField::Include);
            assert!(e.to_string().contains("size limit"), "{e}");
        }
        let nested = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        let e = error(filter(None, Some(&nested), None, None));
        assert!(e.to_string().contains("nest"), "{e}");
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        let e = error(filter(Some(&long), None, None, None));
        assert_eq!(
            e,
            FilterError::TooLong {
                field: FilterField::Include,
                len: 1025,
                max: MAX_PATTERN_LEN
            }
        );
        let e = error(filter(
            None,
            None,
            Some(&format!(">={}", "1".repeat(2000))),
            None,
        ));
        assert!(matches!(
            e,
            FilterError::TooLong {
                field: FilterField::Semver,
                ..
            }
        ));
        // A reasonable pattern at the length cap still compiles.
        let ok = "a?".repeat(MAX_PATTERN_LEN / 2);
        assert!(filter(Some(&ok), None, None, None).compile().is_ok());
    }

    /// The limits leave room for the patterns people write for tags.
    #[test]
    fn usual_patterns_fit_the_limits() {
        for p in [
            ".*",
            ".{128}",
            "[0-9a-f]{40}",
            "[A-Za-z0-9_]{128}",
            r"(?-u:\w){128}",
            r"\w+",
            r"\d{20}",
            r"v?[0-9]+\.[0-9]+\.[0-9]+(-[a-z0-9.]+)?",
            r"sha256-[0-9a-f]{64}\.(sig|att|sbom)",
        ] {
            assert!(
                filter(Some(p), Some(p), None, None).compile().is_ok(),
                "{p}"
            );
        }
        let unicode = filter(Some(r"\w{30}"), None, None, None).compile();
        assert!(unicode.is_err_and(|e| e.to_string().contains("size limit")));
    }

    /// Matching is linear: a classic catastrophic-backtracking pattern against a long
    /// tag returns at once.
    #[test]
    fn matching_does_not_backtrack() {
        let f = filter(Some("(a+)+b"), None, None, None).compile().unwrap();
        let tag = "a".repeat(128);
        let start = Instant::now();
        assert!(!f.matches(&tag));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
