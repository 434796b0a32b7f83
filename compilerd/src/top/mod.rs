//! `discomy top`: a live terminal view of the farm, in the spirit of icemon and htop.
//!
//! This room owns the terminal loop and the fetching: one background thread asks the
//! coordinator for its [`FarmStatus`](discomy_protocol::coordinator::FarmStatus) (as `discomy
//! status` does) every refresh interval, another asks the build queue's HTTP API for the jobs
//! that have not ended; both send [`model::Update`]s over a channel, so a slow or silent
//! coordinator never blocks the keys or the screen. The terminal is restored on every way out
//! (quit, error, panic). What is shown and how keys change it is [`model`] (pure, unit-tested);
//! the drawing is [`view`].

pub mod model;
pub mod view;

use std::io::IsTerminal;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use discomy_protocol::AuthConfig;
use discomy_protocol::ops::JobState;
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::coord::api::ApiClient;
use crate::coord::discover::CoordinatorAddr;
use model::{Action, Model, Queue, Update};

/// Options of `discomy top`.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// The coordinator's `host[:port]` (or several, comma-separated).
    pub coordinator: String,
    /// The farm token (the coordinator's and the API's).
    pub token: Option<String>,
    /// The build queue's API (`http://HOST:PORT`, `https://` for a working fleet's), when there
    /// is one to show.
    pub api: Option<String>,
    /// The fleet directory (`--fleet-dir`): its `ca.pem` verifies an `https://` API.
    pub fleet_dir: Option<std::path::PathBuf>,
    /// How often both are asked again.
    pub refresh: Duration,
}

/// How long the loop waits for a key before it looks for news from the fetching threads.
const KEY_POLL: Duration = Duration::from_millis(100);

/// Runs the view until `q` (or Ctrl-C); the terminal is restored however it ends.
pub fn run(opts: &TopOptions) -> Result<()> {
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "discomy top needs a terminal (use `discomy status` for a report)"
    );
    let coordinator = CoordinatorAddr::explicit(&opts.coordinator).to_string();
    let api = match &opts.api {
        Some(url) => {
            Some(ApiClient::from_args(url, opts.token.clone(), None, opts.fleet_dir.as_deref())?)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel();
    let auth = AuthConfig::from_option(opts.token.as_deref());
    {
        let (tx, coordinator, every) = (tx.clone(), coordinator.clone(), opts.refresh);
        std::thread::Builder::new()
            .name("top-farm".into())
            .spawn(move || fetch_farm(&coordinator, &auth, every, &tx))
            .context("cannot start the fetching thread")?;
    }
    let queue = match api {
        Some(api) => {
            let (tx, every) = (tx.clone(), opts.refresh);
            let pending = Queue::Pending(api.base_url().to_owned());
            std::thread::Builder::new()
                .name("top-queue".into())
                .spawn(move || fetch_queue(&api, every, &tx))
                .context("cannot start the fetching thread")?;
            pending
        }
        None => Queue::NotConfigured,
    };
    drop(tx);
    let mut model = Model::new(&coordinator, queue);

    // Restores on every return from here (errors included); ratatui's panic hook on panics.
    let _restore = Restore;
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    event_loop(&mut terminal, &mut model, &rx)
}

/// Leaves raw mode and the alternate screen when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    model: &mut Model,
    rx: &Receiver<Update>,
) -> Result<()> {
    loop {
        while let Ok(update) = rx.try_recv() {
            model.apply(update, Instant::now());
        }
        terminal.draw(|frame| view::draw(frame, model, Instant::now()))?;
        if !event::poll(KEY_POLL)? {
            continue;
        }
        // Resizes and other events just draw again.
        if let Event::Key(key) = event::read()?
            && key.kind == KeyEventKind::Press
            && model.key(key) == Some(Action::Quit)
        {
            return Ok(());
        }
    }
}

/// Asks the coordinator for the farm's status every `every`, until the view is gone.
fn fetch_farm(coordinator: &str, auth: &AuthConfig, every: Duration, tx: &Sender<Update>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = tx.send(Update::Farm(Err(format!("cannot start a runtime: {err}"))));
            return;
        }
    };
    loop {
        let got = runtime
            .block_on(crate::coord::status::fetch(coordinator, auth))
            .map_err(|err| err.to_string());
        if tx.send(Update::Farm(got)).is_err() {
            return;
        }
        std::thread::sleep(every);
    }
}

/// Asks the build queue's API for the jobs that have not ended every `every`, until the view is
/// gone. (Only those states: the finished history can be long.)
fn fetch_queue(api: &ApiClient, every: Duration, tx: &Sender<Update>) {
    let base = api.base_url().to_owned();
    loop {
        let mut jobs = Vec::new();
        let mut failed = None;
        for state in [JobState::Running, JobState::Scheduled, JobState::Waiting] {
            match api.list_jobs(Some(state), None) {
                Ok(some) => jobs.extend(some),
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        let queue = match failed {
            Some(why) => Queue::Unreachable(base.clone(), why),
            None => Queue::Jobs(base.clone(), jobs),
        };
        if tx.send(Update::Queue(queue)).is_err() {
            return;
        }
        std::thread::sleep(every);
    }
}
