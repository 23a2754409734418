//! The node's ingestor: the one place that knows which shards want which topics.
//!
//! It runs on its own thread and owns topic → shard set (one set per encoding), fed
//! by the shards' interest changes. Each publication is encoded once per encoding
//! that has subscribers and handed, reference-counted, to exactly the shards that
//! want it, over their bounded queues; a full queue is counted and logged, never
//! waited on. Without Redis this is the node's whole bus (the embedded default).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{Encoding, Publication, Topic};
use coregate_shards::{
    IngestorCommand, InterestChange, ShardMessage, ShardSender, ShardSet, SharedDelivery,
};

/// Counters of the ingestor, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct IngestorStats {
    pub publications: AtomicU64,
    pub publications_without_subscribers: AtomicU64,
    pub shard_queue_full: AtomicU64,
    pub topics_of_interest: AtomicU64,
}

/// See the module docs.
pub struct Ingestor {
    shards: Vec<ShardSender>,
    /// Per topic, per encoding: the shards with at least one local subscriber.
    interest: HashMap<Topic, [ShardSet; 2]>,
    stats: Arc<IngestorStats>,
    last_full_warning: Option<Instant>,
}

impl Ingestor {
    pub fn new(shards: Vec<ShardSender>, stats: Arc<IngestorStats>) -> Ingestor {
        Ingestor {
            shards,
            interest: HashMap::new(),
            stats,
            last_full_warning: None,
        }
    }

    pub fn handle(&mut self, command: IngestorCommand) {
        match command {
            IngestorCommand::Interest {
                shard_id,
                topic,
                encoding,
                change,
            } => self.change_interest(shard_id, topic, encoding, change),
            IngestorCommand::Publish(publication) => self.deliver(publication),
        }
    }

    fn change_interest(
        &mut self,
        shard_id: usize,
        topic: Topic,
        encoding: Encoding,
        change: InterestChange,
    ) {
        match change {
            InterestChange::Gained => {
                self.interest.entry(topic).or_default()[encoding.index()].insert(shard_id);
            }
            InterestChange::Lost => {
                if let Some(sets) = self.interest.get_mut(&topic) {
                    sets[encoding.index()].remove(shard_id);
                    if sets.iter().all(ShardSet::is_empty) {
                        self.interest.remove(&topic);
                    }
                }
            }
        }
        self.stats
            .topics_of_interest
            .store(self.interest.len() as u64, Ordering::Relaxed);
    }

    /// Encodes once per encoding in use and hands the event to each interested shard.
    pub fn deliver(&mut self, publication: Publication) {
        self.stats.publications.fetch_add(1, Ordering::Relaxed);
        let Some(sets) = self.interest.get(publication.topic()).copied() else {
            self.stats
                .publications_without_subscribers
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let delivery = SharedDelivery::new(publication, Instant::now());
        for encoding in Encoding::ALL {
            if !sets[encoding.index()].is_empty() {
                delivery.wire(encoding);
            }
        }
        let delivery = Arc::new(delivery);
        for shard_id in sets[0].union(sets[1]).iter() {
            let Some(shard) = self.shards.get(shard_id) else {
                continue;
            };
            if let Err(e) = shard.try_send(ShardMessage::Deliver(delivery.clone())) {
                self.stats.shard_queue_full.fetch_add(1, Ordering::Relaxed);
                self.warn_full(&e);
            }
        }
    }

    /// At most one warning a second, however many events are dropped.
    fn warn_full(&mut self, error: &coregate_shards::HandOffError) {
        let now = Instant::now();
        if self
            .last_full_warning
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            self.last_full_warning = Some(now);
            tracing::warn!(%error, "event dropped: a shard's queue is full");
        }
    }
}

/// Runs the ingestor on its own thread until every command sender is gone.
pub fn spawn(
    commands: flume::Receiver<IngestorCommand>,
    mut ingestor: Ingestor,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ingestor".into())
        .spawn(move || {
            while let Ok(command) = commands.recv() {
                ingestor.handle(command);
                // Drain what is already queued before blocking again.
                while let Ok(command) = commands.try_recv() {
                    ingestor.handle(command);
                }
            }
        })
}
