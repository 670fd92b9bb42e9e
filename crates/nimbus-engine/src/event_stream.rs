//! Event streams (`GET /v1/events`): one reader per server, any number of subscribers.
//!
//! Each server runs one task, the hub, that reads new events from the store once after every change (by
//! any server: the store's change counter) and broadcasts them in sequence order. A subscriber first
//! catches up from the store (its project's events after the sequence number it asked for), then takes
//! the broadcast, keeping its project's events; one that falls behind the broadcast's buffer reads from
//! the store again. So a change costs one store read per server, not one per subscriber (each of whom
//! used to re-read on every change, with a key check), and none while nobody subscribes (then the hub
//! reads once a second).
//!
//! A subscription ends when its key is revoked: it checks whether its key still stands whenever the
//! store's revocation counter moves, never in between.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::event::Event;
use tokio::sync::{broadcast, watch};

use crate::{Context, Engine, Result};

/// Events the broadcast holds for a subscriber that has not taken them yet; past it, the subscriber
/// reads from the store.
const BUFFER: usize = 4096;
/// Events read from the store at a time.
const BATCH: u32 = 500;
/// While nobody subscribes, how often the hub looks for subscribers, and (at most) how often it reads.
const UNHEARD_LOOK_EVERY: Duration = Duration::from_millis(100);
const UNHEARD_READ_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn channel() -> broadcast::Sender<Arc<Event>> {
    broadcast::channel(BUFFER).0
}

/// The hub: broadcasts every event stored after it starts, in sequence order.
pub(crate) fn spawn_hub(engine: &Arc<Engine>) {
    let (store, events) = (engine.store.clone(), engine.events.clone());
    let task = tokio::spawn(async move {
        let mut changes = store.changes();
        let mut last = loop {
            match store.latest_event_seq(None).await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::warn!(error = %e, "event hub: reading the newest event; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let (mut read_at, mut caught_up) = (tokio::time::Instant::now(), true);
        loop {
            // Nobody subscribed: reading after every commit would be two store reads per commit for no one
            // (a busy server commits hundreds of times a second). The hub still looks now and then, so that
            // it does not start far behind when someone comes; a subscriber catches up from the store on
            // its own until the broadcast takes over, so nothing is missed meanwhile.
            while caught_up && events.receiver_count() == 0 && read_at.elapsed() < UNHEARD_READ_EVERY {
                tokio::time::sleep(UNHEARD_LOOK_EVERY).await;
            }
            read_at = tokio::time::Instant::now();
            // Marked seen before the read: a change committed after it ends the wait below.
            changes.borrow_and_update();
            // Still nobody: what was stored meanwhile is nobody's to hear, and decoding it all (every event
            // of a busy server) was a tenth of its CPU. The hub skips to the newest event instead. A
            // subscriber subscribes before its first read from the store, so one that came before the
            // second count reads up to at least that newest event on its own; the skip is kept only if
            // none had.
            if events.receiver_count() == 0 {
                if let Ok(newest) = store.latest_event_seq(None).await {
                    if events.receiver_count() == 0 {
                        last = last.max(newest);
                        caught_up = true;
                        continue;
                    }
                }
            }
            let read = store.events_after(None, last, BATCH).await;
            caught_up = matches!(&read, Ok(batch) if batch.is_empty());
            match read {
                Ok(batch) if batch.is_empty() => Engine::wait_for_change(&mut changes, Duration::from_secs(15)).await,
                Ok(batch) => {
                    for event in batch {
                        last = event.seq;
                        // Nobody listening is no error.
                        let _ = events.send(Arc::new(event));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event hub: reading events; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    engine.track(task.abort_handle());
}

/// One caller's stream of its project's events.
pub struct EventSubscription {
    engine: Arc<Engine>,
    ctx: Context,
    /// The sequence number of the last event handed out.
    last: i64,
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Arc<Event>>,
    /// Whether `backlog` holds everything stored up to the point the broadcast takes over.
    caught_up: bool,
    revocations: watch::Receiver<u64>,
}

impl EventSubscription {
    /// The next event, or `None` when the stream ends (its key was revoked, the server is stopping, the
    /// store failed).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.last = event.seq;
                return Some(event);
            }
            if !self.caught_up {
                let batch = self.engine.store.events_after(Some(self.ctx.project.id), self.last, BATCH).await.ok()?;
                self.caught_up = batch.len() < BATCH as usize;
                self.backlog.extend(batch);
                continue;
            }
            tokio::select! {
                live = self.live.recv() => match live {
                    Ok(event) if event.project_id == self.ctx.project.id && event.seq > self.last => {
                        self.backlog.push_back((*event).clone());
                    }
                    Ok(_) => {}
                    // Fell behind the broadcast: what it dropped is in the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                revoked = self.revocations.changed() => {
                    revoked.ok()?;
                    self.revocations.borrow_and_update();
                    if !self.engine.key_stands(&self.ctx).await {
                        return None;
                    }
                }
            }
        }
    }
}

impl Engine {
    /// The caller's project's events after `after_seq`, then as they come, until its key is revoked.
    pub fn subscribe_events(self: &Arc<Self>, ctx: &Context, after_seq: i64) -> Result<EventSubscription> {
        // Subscribed before the first read from the store, so that nothing falls between the two.
        let live = self.events.subscribe();
        let mut revocations = self.store.revocations();
        revocations.borrow_and_update();
        Ok(EventSubscription {
            engine: self.clone(),
            ctx: ctx.clone(),
            last: after_seq,
            backlog: VecDeque::new(),
            live,
            caught_up: false,
            revocations,
        })
    }
}
