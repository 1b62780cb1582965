//! A thread that assembles the next training batch (decoding, cropping, augmenting) while the
//! current step runs, so that a GPU does not wait for the CPU between steps. The batch of a draw
//! index is a function of that index alone (the loader's sampler and augmentation streams are
//! seeded by position), so the thread prepares exactly the batch the step would have assembled
//! itself: training is bit-identical with it or without it (a test).

use difforge_data::{Batch, Loader};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// What the thread is asked for: the batch of `draw` with `size` images.
type Request = (u64, usize);

pub struct Prefetcher {
    requests: Option<SyncSender<Request>>,
    results: Receiver<(Request, Batch)>,
    /// The request the thread is working on (or has answered) that nobody has taken yet.
    pending: Option<Request>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Moves `loader` to its own thread.
    pub fn start(mut loader: Loader) -> std::io::Result<Prefetcher> {
        let (requests, asked) = sync_channel::<Request>(1);
        let (answer, results) = sync_channel(1);
        let worker = std::thread::Builder::new().name("difforge-prefetch".into()).spawn(move || {
            for (draw, size) in asked {
                if answer.send(((draw, size), loader.train_batch(draw, size))).is_err() {
                    break;
                }
            }
        })?;
        Ok(Prefetcher { requests: Some(requests), results, pending: None, worker: Some(worker) })
    }

    /// The batch of `draw` (`size` images); the thread starts on `draw + 1` at once.
    pub fn batch(&mut self, draw: u64, size: usize) -> Result<Batch, String> {
        let wanted = (draw, size);
        let mut batch = None;
        if let Some(pending) = self.pending.take() {
            let (done, b) = self.receive()?;
            debug_assert_eq!(done, pending);
            // A batch prepared for another draw (after a rollback, say) is dropped.
            batch = (done == wanted).then_some(b);
        }
        let batch = match batch {
            Some(b) => b,
            None => {
                self.send(wanted)?;
                self.receive()?.1
            }
        };
        self.send((draw + 1, size))?;
        self.pending = Some((draw + 1, size));
        Ok(batch)
    }

    fn send(&self, request: Request) -> Result<(), String> {
        let stopped = || "the batch prefetch thread stopped (it panicked: see above)".to_string();
        self.requests.as_ref().ok_or_else(stopped)?.send(request).map_err(|_| stopped())
    }

    fn receive(&self) -> Result<(Request, Batch), String> {
        self.results.recv().map_err(|_| "the batch prefetch thread stopped (it panicked: see above)".to_string())
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the request channel ends the thread's loop once its current batch is done.
        self.requests = None;
        if let Some(w) = self.worker.take() {
            // Dropping the results channel fails the send of a batch nobody will take.
            drop(std::mem::replace(&mut self.results, sync_channel(0).1));
            let _ = w.join();
        }
    }
}
