//! Running fleets: in this process, or in worker processes (this executable re-run with the
//! hidden `worker` subcommand). A worker reads its [`FleetSpec`] as one JSON line on stdin,
//! writes each [`FleetEvent`] as one JSON line on stdout, takes each [`Control`] as one JSON
//! line on stdin, and stops on `Control::Stop` (or when stdin closes).

use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::fleet::{self, Control, FleetEvent, FleetSpec};

/// One running fleet, from the parent's side.
enum Member {
    Local(Option<mpsc::UnboundedSender<Control>>),
    Process {
        child: Box<Child>,
        stdin: Option<ChildStdin>,
    },
}

/// The running fleets.
pub struct Fleets {
    members: Vec<Member>,
}

/// Events of every fleet, tagged with the fleet's index.
pub type Events = mpsc::UnboundedReceiver<(usize, FleetEvent)>;

/// Starts `specs`: in this process when there is one and `local` is set, else one worker
/// process each.
pub async fn start(specs: Vec<FleetSpec>, local: bool) -> anyhow::Result<(Fleets, Events)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    if local && specs.len() == 1 {
        let spec = specs.into_iter().next().context("one spec")?;
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            if let Err(e) = fleet::run(spec, events_tx.clone(), control_rx).await {
                let _ = events_tx.send(FleetEvent::Failed {
                    message: format!("{e:#}"),
                });
            }
        });
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                if tx.send((0, event)).is_err() {
                    break;
                }
            }
        });
        members.push(Member::Local(Some(control_tx)));
        return Ok((Fleets { members }, rx));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    for (index, spec) in specs.into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut line = serde_json::to_string(&spec)?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut done = false;
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FleetEvent>(&line) {
                    Ok(event) => {
                        done |= matches!(event, FleetEvent::Done(_) | FleetEvent::Failed { .. });
                        if tx.send((index, event)).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("worker {index}: {line}"),
                }
            }
            if !done {
                let _ = tx.send((
                    index,
                    FleetEvent::Failed {
                        message: format!("worker {index} exited without a report"),
                    },
                ));
            }
        });
        members.push(Member::Process {
            child: Box::new(child),
            stdin: Some(stdin),
        });
    }
    Ok((Fleets { members }, rx))
}

impl Fleets {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Pids of the worker processes (empty when running locally).
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| match m {
                Member::Process { child, .. } => child.id(),
                Member::Local(_) => None,
            })
            .collect()
    }

    /// Sends `control` to every fleet; after `Control::Stop` nothing more can be sent.
    pub async fn send(&mut self, control: &Control) {
        let last = matches!(control, Control::Stop { .. });
        let mut line = serde_json::to_string(control).unwrap_or_else(|_| "{}".into());
        line.push('\n');
        for member in &mut self.members {
            match member {
                Member::Local(tx) => {
                    if let Some(sender) = tx.as_ref() {
                        let _ = sender.send(control.clone());
                    }
                    if last {
                        *tx = None;
                    }
                }
                Member::Process { stdin, .. } => {
                    if let Some(pipe) = stdin.as_mut() {
                        let _ = pipe.write_all(line.as_bytes()).await;
                        let _ = pipe.flush().await;
                    }
                    if last {
                        *stdin = None;
                    }
                }
            }
        }
    }

    /// Tells every fleet to stop.
    pub async fn stop(&mut self, published: Vec<u64>) {
        self.send(&Control::Stop { published }).await;
    }

    /// Waits for worker processes to exit (they do after their report).
    pub async fn reap(&mut self) {
        for member in &mut self.members {
            if let Member::Process { child, .. } = member {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await;
            }
        }
    }
}

/// The `worker` subcommand.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin.next_line().await?.context("no fleet spec on stdin")?;
    let spec: FleetSpec = serde_json::from_str(&line).context("fleet spec")?;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Forward every control line; a closed stdin (or a line we cannot read) stops.
        loop {
            let control = match stdin.next_line().await {
                Ok(Some(line)) => serde_json::from_str(&line).unwrap_or(Control::Stop {
                    published: Vec::new(),
                }),
                _ => Control::Stop {
                    published: Vec::new(),
                },
            };
            let last = matches!(control, Control::Stop { .. });
            if control_tx.send(control).is_err() || last {
                return;
            }
        }
    });
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let fleet = tokio::spawn(fleet::run(spec, events_tx, control_rx));
    let mut stdout = tokio::io::stdout();
    while let Some(event) = events_rx.recv().await {
        let mut line = serde_json::to_string(&event)?;
        line.push('\n');
        stdout.write_all(line.as_bytes()).await?;
        stdout.flush().await?;
        if matches!(event, FleetEvent::Done(_)) {
            break;
        }
    }
    match fleet.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let event = FleetEvent::Failed {
                message: format!("{e:#}"),
            };
            let mut line = serde_json::to_string(&event)?;
            line.push('\n');
            stdout.write_all(line.as_bytes()).await?;
            stdout.flush().await?;
            Err(e)
        }
        Err(e) => Err(e.into()),
    }
}
