//! The copy: walk the source (index, children, blobs), transfer the blobs
//! ([`crate::transfer`]), then push manifests bottom up, the tag last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;

use crate::client::{Client, ManifestData};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::platform::{self, Pick, Platform};
use crate::progress::{Progress, ProgressEvent};
use crate::reference::{Digest, Reference};
use crate::transfer::transfer_blobs;
use crate::{Engine, Outcome, Selection, SyncOptions};

/// Manifest reads, HEADs and writes of one copy sent at a time.
const MANIFESTS_AT_ONCE: usize = 8;

pub(crate) struct Emit(pub(crate) Option<Arc<dyn Progress>>);

impl Emit {
    pub(crate) fn send(&self, e: ProgressEvent) {
        if let Some(p) = &self.0 {
            p.event(e);
        }
    }
}

/// A manifest of the source tree, children before parents.
pub(crate) struct Node {
    pub(crate) data: ManifestData,
    pub(crate) manifest: Manifest,
}

pub(crate) async fn sync(
    engine: &Engine,
    source: &Reference,
    destination: &Reference,
    options: &SyncOptions,
) -> Result<Outcome> {
    let started = Instant::now();
    let emit = Emit(options.progress.clone());
    let src_client = engine.client(source);
    let dst_client = engine.client(destination);

    let source = match &options.expect_source_digest {
        Some(d) => source.with_digest(d.clone()),
        None => source.clone(),
    };
    // The source's side (its digest, the selection) and the destination's HEAD do not
    // depend on each other: both go out at once, so a no-op costs one round trip.
    let source_side = async {
        let source_digest = source_digest(&src_client, &source).await?;
        let (target, pick) = selection_digest(
            &src_client,
            &source,
            &source_digest,
            &options.platforms,
            options.known.as_ref(),
        )
        .await?;
        Ok::<_, Error>((source_digest, target, pick))
    };
    // The connections that parallel requests after these HEADs need open beside them: the
    // referrers probe's second HEAD at the source, and a copy's blob requests on both
    // sides. A handshake and then a `GET /v2/` take two round trips, so opened any later
    // they would not be ready when the blobs' requests go out. A no-op leaves them unused
    // (at most `jobs`, which is at least 1, per registry in a process).
    let (source_side, current) = after_first_poll(
        async { tokio::join!(source_side, destination_digest(&dst_client, destination)) },
        || {
            src_client.warm(engine.jobs());
            dst_client.warm(engine.jobs());
        },
    )
    .await;
    let (source_digest, target, pick) = source_side?;
    check_destination_pin(destination, &target)?;
    let id = destination.id(&target);
    let current = current?;
    // A destination without the tag is most likely a new repository (see
    // `transfer::BlobJob::cold`).
    let cold = current.is_none();
    if destination_up_to_date(destination, current.as_ref(), &target) {
        tracing::info!(%source, %destination, digest = %target, "destination up to date");
        let mut outcome = Outcome {
            source_digest,
            destination_digest: target,
            id,
            up_to_date: true,
            bytes_uploaded: 0,
            blobs_uploaded: 0,
            blobs_skipped: 0,
            blobs_mounted: 0,
            manifests_pushed: 0,
            uploaded: Vec::new(),
            referrers: Vec::new(),
            referrers_probe: None,
            referrers_checked: false,
        };
        // Referrers added at the source since the image was copied still follow it.
        let hook = crate::attached::Hook::new(engine, &src_client, &dst_client, &emit);
        hook.follow(&source, destination, None, options, &mut outcome)
            .await?;
        return Ok(outcome);
    }

    let top = read_top(&src_client, &source, &source_digest, &target, pick, options).await?;
    let tree = read_source(&src_client, &dst_client, &source, destination, top).await?;
    let blobs = tree.blobs();
    let total_bytes = blobs
        .values()
        .fold(0u64, |total, d| total.saturating_add(d.size));
    let manifests = tree.missing_children.len() + 1;
    emit.send(ProgressEvent::Planned {
        blobs: blobs.len(),
        bytes: total_bytes,
        manifests,
    });
    tracing::info!(%source, %destination, blobs = blobs.len(), bytes = total_bytes, manifests, "copying");

    // The image's referrers are looked up at the source while its blobs are in flight
    // (reads only); they are written after the image is complete.
    let hook = crate::attached::Hook::new(engine, &src_client, &dst_client, &emit);
    let image = crate::attached::Image {
        top: target.clone(),
        source_digest: source_digest.clone(),
    };
    let looking = hook.look(
        &source,
        destination,
        &image,
        Some(tree.child_digests()),
        options,
    );
    let copying = async {
        let stats = transfer_blobs(
            engine,
            &src_client,
            &dst_client,
            &source,
            destination,
            blobs,
            cold,
            &emit,
        )
        .await?;
        let pushed = push_manifests(&dst_client, destination, &tree, &target, &emit).await?;
        Ok::<_, Error>((stats, pushed))
    };
    let (copied, looked) = tokio::join!(copying, looking);
    let (stats, (written, mut uploaded)) = copied?;
    let looked = looked?;
    uploaded.extend(stats.uploaded);
    uploaded.sort();
    tracing::info!(
        %source, %destination, digest = %written, bytes_uploaded = stats.bytes, blobs_uploaded = stats.count_uploaded,
        blobs_skipped = stats.count_skipped, blobs_mounted = stats.count_mounted,
        elapsed_ms = started.elapsed().as_millis() as u64, "synced"
    );
    let mut outcome = Outcome {
        source_digest,
        destination_digest: written,
        id,
        up_to_date: false,
        bytes_uploaded: stats.bytes,
        blobs_uploaded: stats.count_uploaded,
        blobs_skipped: stats.count_skipped,
        blobs_mounted: stats.count_mounted,
        manifests_pushed: manifests,
        uploaded,
        referrers: Vec::new(),
        referrers_probe: None,
        referrers_checked: false,
    };
    // Signatures, attestations and SBOMs follow, after the image is complete.
    hook.write(&source, destination, looked, &mut outcome)
        .await?;
    Ok(outcome)
}

/// Polls `fut` once, runs `then`, and awaits the rest of `fut`: the requests `fut` sends
/// at once take the connections already open, before `then` (a [`Client::warm`]) opens
/// more.
async fn after_first_poll<F: std::future::Future>(fut: F, then: impl FnOnce()) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let first = futures::poll!(fut.as_mut());
    then();
    match first {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => fut.await,
    }
}

/// The source's digest: pinned, or resolved by HEAD.
async fn source_digest(src_client: &Client, source: &Reference) -> Result<Digest> {
    match source.digest() {
        Some(d) => Ok(d.clone()),
        None => src_client.resolve(source).await,
    }
}

/// The digest the destination is to have, with the selection when it had to be made.
/// Without a selection: the source digest, no request. With one: `known`'s digest when it
/// was made from this source digest (what a selection gives is fixed by the digest), no
/// request; otherwise the selection made from the source manifest, one GET (plus the
/// config of a single-platform source).
pub(crate) async fn selection_digest(
    src_client: &Client,
    source: &Reference,
    source_digest: &Digest,
    platforms: &[Platform],
    known: Option<&Selection>,
) -> Result<(Digest, Option<Pick>)> {
    if platforms.is_empty() {
        return Ok((source_digest.clone(), None));
    }
    if let Some(k) = known.filter(|k| k.source_digest == *source_digest) {
        return Ok((k.digest.clone(), None));
    }
    let pinned = source.with_digest(source_digest.clone());
    let pick = platform::pick(src_client, &pinned, platforms).await?;
    Ok((pick.digest().clone(), Some(pick)))
}

/// A destination written by digest must be given exactly that digest.
fn check_destination_pin(destination: &Reference, target: &Digest) -> Result<()> {
    match destination.digest() {
        Some(want) if want != target => Err(Error::DigestMismatch {
            reference: destination.to_string(),
            expected: want.to_string(),
            actual: target.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The manifest the destination's tag gets: the source manifest, its selected child or
/// the index of the selected children. A selection taken from `known` is made again from
/// the source here and must give the digest `known` said.
async fn read_top(
    src_client: &Client,
    source: &Reference,
    source_digest: &Digest,
    target: &Digest,
    pick: Option<Pick>,
    options: &SyncOptions,
) -> Result<ManifestData> {
    let pinned = source.with_digest(source_digest.clone());
    let pick = match pick {
        Some(p) => p,
        None => platform::pick(src_client, &pinned, &options.platforms).await?,
    };
    if pick.digest() != target {
        return Err(Error::DigestMismatch {
            reference: format!("{pinned} (platforms selected)"),
            expected: target.to_string(),
            actual: pick.digest().to_string(),
        });
    }
    pick.manifest(src_client, source).await
}

/// What the destination resolves to now, by HEAD; `None` when it is missing.
async fn destination_digest(
    dst_client: &Client,
    destination: &Reference,
) -> Result<Option<Digest>> {
    match dst_client.resolve(destination).await {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the destination's `current` digest is the wanted one.
fn destination_up_to_date(
    destination: &Reference,
    current: Option<&Digest>,
    digest: &Digest,
) -> bool {
    match current {
        Some(d) if d == digest => true,
        Some(d) => {
            tracing::info!(%destination, current = %d, wanted = %digest, "destination differs");
            false
        }
        None => {
            tracing::debug!(%destination, "destination missing");
            false
        }
    }
}

/// The source tree to write: the top manifest and the child manifests the destination
/// lacks (children before parents), all verified against their digests.
struct SourceTree {
    top: ManifestData,
    top_manifest: Manifest,
    missing_children: Vec<Node>,
}

impl SourceTree {
    /// The child manifests of the image: the top index's entries and any nested child
    /// read from the source.
    fn child_digests(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self
            .top_manifest
            .children()
            .iter()
            .map(|c| c.digest.clone())
            .collect();
        for c in &self.missing_children {
            if !out.contains(&c.data.digest) {
                out.push(c.data.digest.clone());
            }
        }
        out
    }

    /// Every blob the top manifest and the missing children reference, once each.
    fn blobs(&self) -> BTreeMap<Digest, Descriptor> {
        let mut blobs = BTreeMap::new();
        for d in self.top_manifest.blobs().into_iter().chain(
            self.missing_children
                .iter()
                .flat_map(|c| c.manifest.blobs()),
        ) {
            blobs.entry(d.digest.clone()).or_insert(d);
        }
        blobs
    }
}

async fn read_source(
    src_client: &Client,
    dst_client: &Client,
    source: &Reference,
    destination: &Reference,
    top: ManifestData,
) -> Result<SourceTree> {
    let pinned = source.with_digest(top.digest.clone());
    let top_manifest = Manifest::parse(&pinned.to_string(), &top.media_type, &top.bytes)?;
    let mut children: Vec<Node> = Vec::new();
    // Children already at the destination have all their blobs there. The index names its
    // children's digests, so their HEADs at the destination go out with their GETs at the
    // source (one round trip for a one-level index, not two per child).
    let direct: Vec<Digest> = top_manifest
        .children()
        .iter()
        .map(|c| c.digest.clone())
        .collect();
    let (collected, present) = tokio::join!(
        collect_children(src_client, source, &top_manifest, &mut children, 0),
        present_at(dst_client, destination, &direct)
    );
    collected?;
    let mut present = present?;
    // A set: an index may name thousands of children, and a list lookup per child would
    // cost their square.
    let asked: HashSet<&Digest> = direct.iter().collect();
    let nested: Vec<Digest> = children
        .iter()
        .map(|c| c.data.digest.clone())
        .filter(|d| !asked.contains(d))
        .collect();
    present.extend(present_at(dst_client, destination, &nested).await?);
    let mut missing_children = Vec::new();
    for child in children {
        if present.contains(&child.data.digest) {
            tracing::debug!(digest = %child.data.digest, "child manifest already at destination");
        } else {
            missing_children.push(child);
        }
    }
    Ok(SourceTree {
        top,
        top_manifest,
        missing_children,
    })
}

/// Which of `digests` the destination repository holds, by HEADs sent
/// [`MANIFESTS_AT_ONCE`] at a time; any error but "not found" fails it.
async fn present_at(
    dst_client: &Client,
    destination: &Reference,
    digests: &[Digest],
) -> Result<HashSet<Digest>> {
    let heads = digests.iter().map(|d| async move {
        match dst_client
            .resolve(&destination.with_digest(d.clone()))
            .await
        {
            Ok(_) => Ok(Some(d.clone())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    });
    let found: Vec<Option<Digest>> =
        crate::discover::in_order(heads.collect(), MANIFESTS_AT_ONCE).await?;
    Ok(found.into_iter().flatten().collect())
}

/// Pushes the missing child manifests by digest, deepest first (collect_children puts
/// children before parents), then the tagged manifest last, so the tag never points at
/// an incomplete image. Returns the digest written and the child manifests pushed.
async fn push_manifests(
    dst_client: &Client,
    destination: &Reference,
    tree: &SourceTree,
    target: &Digest,
    emit: &Emit,
) -> Result<(Digest, Vec<Digest>)> {
    // A manifest is pushed after every child it names: in rounds by height (an image is 0,
    // an index one more than its highest missing child), each round's PUTs together.
    let mut heights: HashMap<&Digest, usize> = HashMap::new();
    for child in &tree.missing_children {
        let height = child
            .manifest
            .children()
            .iter()
            .filter_map(|c| heights.get(&c.digest))
            .max()
            .map_or(0, |h| h + 1);
        heights.insert(&child.data.digest, height);
    }
    let mut pushed = Vec::new();
    for height in 0..=heights.values().copied().max().unwrap_or(0) {
        let round: Vec<_> = tree
            .missing_children
            .iter()
            .filter(|c| heights.get(&c.data.digest) == Some(&height))
            .map(|child| async move {
                let r = destination.with_digest(child.data.digest.clone());
                dst_client
                    .put_manifest(&r, &child.data.media_type, child.data.bytes.clone())
                    .await?;
                emit.send(ProgressEvent::Manifest {
                    digest: child.data.digest.clone(),
                });
                Ok(child.data.digest.clone())
            })
            .collect();
        pushed.extend(crate::discover::in_order(round, MANIFESTS_AT_ONCE).await?);
    }
    let written = dst_client
        .put_manifest(destination, &tree.top.media_type, tree.top.bytes.clone())
        .await?;
    if written != *target {
        return Err(Error::DigestMismatch {
            reference: destination.to_string(),
            expected: target.to_string(),
            actual: written.to_string(),
        });
    }
    emit.send(ProgressEvent::Manifest {
        digest: written.clone(),
    });
    Ok((written, pushed))
}

/// Reads every child manifest of `manifest` (recursively), children before parents.
pub(crate) fn collect_children<'a>(
    client: &'a Client,
    source: &'a Reference,
    manifest: &'a Manifest,
    out: &'a mut Vec<Node>,
    depth: usize,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if depth > 4 {
            return Err(Error::UnsupportedManifest {
                reference: source.to_string(),
                media_type: "index".into(),
                reason: "indexes nested more than 4 levels deep".into(),
            });
        }
        let mut seen: HashSet<Digest> = out.iter().map(|n| n.data.digest.clone()).collect();
        // One level's GETs go out together, MANIFESTS_AT_ONCE at a time and taken in
        // order; what is held stays under the tree cap as each one arrives.
        // (Collected before the first poll: no closure is held across an await.)
        let mut reads = Vec::new();
        for child in manifest.children() {
            if seen.insert(child.digest.clone()) {
                let r = source.with_digest(child.digest.clone());
                reads.push(async move {
                    let data = client.get_manifest(&r).await;
                    (r, child, data)
                });
            }
        }
        let mut reads = futures::stream::iter(reads).buffered(MANIFESTS_AT_ONCE);
        let mut level: Vec<Node> = Vec::new();
        while let Some(read) = reads.next().await {
            let (r, child, data) = read;
            let data = data?;
            let held: u64 = out
                .iter()
                .chain(&level)
                .map(|n| n.data.bytes.len() as u64)
                .sum();
            crate::manifest::check_tree_size(&r.to_string(), held, data.bytes.len())?;
            let data = checked_child(&r, child, data)?;
            let parsed = Manifest::parse(&r.to_string(), &data.media_type, &data.bytes)?;
            level.push(Node {
                data,
                manifest: parsed,
            });
        }
        drop(reads);
        for node in level {
            collect_children(client, source, &node.manifest, out, depth + 1).await?;
            out.push(node);
        }
        Ok(())
    })
}

/// A child manifest `r` as read, checked against its descriptor `child`: the size must
/// match (the digest was checked by the read), and an answer without a media type takes
/// the descriptor's.
pub(crate) fn checked_child(
    r: &Reference,
    child: &Descriptor,
    data: ManifestData,
) -> Result<ManifestData> {
    if data.bytes.len() as u64 != child.size {
        return Err(Error::DigestMismatch {
            reference: r.to_string(),
            expected: format!("{} bytes", child.size),
            actual: format!("{} bytes", data.bytes.len()),
        });
    }
    let media_type = if data.media_type.is_empty() {
        child.media_type.clone()
    } else {
        data.media_type
    };
    Ok(ManifestData { media_type, ..data })
}
