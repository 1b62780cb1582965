//! `difforge launch`: starts one difforge process per rank on this node with torchrun's
//! variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
//! DIFFORGE_LAUNCHER=difforge, waits for all of them, and stops the rest when one fails, so that
//! a crashed rank never leaves the others blocked in a collective.

use anyhow::Context;
use difforge_core::ConfigError;
use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the other ranks have to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How often the children are polled: short enough that a failure stops the rest at once.
const POLL: Duration = Duration::from_millis(50);

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Processes to start on this node (one per GPU, typically).
    #[arg(long)]
    pub nproc_per_node: usize,
    /// Nodes in the run (each runs `difforge launch` with its own --node-rank).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index, 0..nnodes.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Where rank 0 meets the others, ADDR:PORT (default on one node: 127.0.0.1 and a free port;
    /// required with several nodes: an address of node 0 that the others reach).
    #[arg(long, value_name = "ADDR:PORT")]
    pub master: Option<String>,
    /// The difforge command every process runs, after `--`, e.g. `-- train --config run.toml --out runs/a`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// What every child is told.
struct Plan {
    nproc: usize,
    node_rank: usize,
    world_size: usize,
    master_addr: String,
    master_port: u16,
}

/// One started rank.
struct Rank {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    // Installed before the children start, so that no signal between the two is lost.
    let signals = Signals::install()?;
    let exe = std::env::current_exe().context("finding difforge's own executable")?;
    tracing::info!(
        "launching {} process(es) of {} (ranks {}..{}), master {}:{}",
        plan.nproc,
        plan.world_size,
        first_rank(&plan),
        first_rank(&plan) + plan.nproc,
        plan.master_addr,
        plan.master_port
    );
    let mut ranks = spawn_all(&exe, &args.command, &plan)?;
    match supervise(&mut ranks, &signals)? {
        None => Ok(()),
        Some((rank, status)) => anyhow::bail!("difforge launch: rank {rank} of {} failed ({status})", plan.world_size),
    }
}

/// Checks the arguments and picks the rendezvous.
fn plan(args: &LaunchArgs) -> Result<Plan, ConfigError> {
    if args.nproc_per_node == 0 {
        return Err(ConfigError::new("--nproc-per-node", 0, "at least 1 process"));
    }
    if args.nnodes == 0 {
        return Err(ConfigError::new("--nnodes", 0, "at least 1 node"));
    }
    if args.node_rank >= args.nnodes {
        return Err(ConfigError::new("--node-rank", args.node_rank, format!("less than --nnodes = {}", args.nnodes)));
    }
    check_command(&args.command)?;
    let (master_addr, master_port) = match (&args.master, args.nnodes) {
        (Some(master), _) => parse_master(master)?,
        (None, 1) => ("127.0.0.1".to_string(), free_port()?),
        (None, n) => return Err(ConfigError::problem("--master", format!("required with --nnodes {n}: ADDR:PORT of node 0, reachable from every node"))),
    };
    let world_size = args.nproc_per_node.checked_mul(args.nnodes).ok_or_else(|| ConfigError::new("--nnodes", args.nnodes, "fewer processes in all"))?;
    Ok(Plan { nproc: args.nproc_per_node, node_rank: args.node_rank, world_size, master_addr, master_port })
}

/// The command after `--` must be there, and must not be another launch (which would start
/// processes of processes, all believing they are the same ranks).
fn check_command(command: &[OsString]) -> Result<(), ConfigError> {
    match command.first().and_then(|c| c.to_str()) {
        None if command.is_empty() => Err(ConfigError::problem(
            "COMMAND",
            "missing: give the difforge command after `--`, e.g. `difforge launch --nproc-per-node 2 -- train --config run.toml`",
        )),
        Some("launch") => Err(ConfigError::new("COMMAND", "launch", "a command other than launch (each process runs it once)")),
        _ => Ok(()),
    }
}

/// `ADDR:PORT`, also `[IPv6]:PORT`.
fn parse_master(master: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::new("--master", master, "ADDR:PORT with a port in 1..=65535, e.g. 10.0.0.1:29500");
    let (addr, port) = master.rsplit_once(':').ok_or_else(bad)?;
    let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    let port = port.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?;
    if addr.is_empty() {
        return Err(bad());
    }
    Ok((addr.to_string(), port))
}

/// A port nobody listens on now. Rank 0 binds it moments later; another program could take it in
/// between, as with torchrun's own choice, and then rank 0 fails with a clear bind error.
fn free_port() -> Result<u16, ConfigError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ConfigError::problem("--master", format!("no free local port to default to ({e}); give --master 127.0.0.1:PORT")))
}

fn first_rank(plan: &Plan) -> usize {
    plan.node_rank * plan.nproc
}

/// Starts every local rank; if one cannot start, those already started are killed.
fn spawn_all(exe: &std::path::Path, command: &[OsString], plan: &Plan) -> anyhow::Result<Vec<Rank>> {
    let mut ranks: Vec<Rank> = Vec::with_capacity(plan.nproc);
    for local_rank in 0..plan.nproc {
        let rank = first_rank(plan) + local_rank;
        match child_command(exe, command, plan, local_rank).spawn() {
            Ok(child) => ranks.push(Rank { rank, child, status: None }),
            Err(e) => {
                for started in &mut ranks {
                    let _ = started.child.kill();
                    let _ = started.child.wait();
                }
                return Err(anyhow::anyhow!("starting rank {rank} ({}): {e}", exe.display()));
            }
        }
    }
    Ok(ranks)
}

/// One rank's process: the same executable, the command after `--`, torchrun's variables.
/// Stdin, stdout and stderr are inherited.
fn child_command(exe: &std::path::Path, command: &[OsString], plan: &Plan, local_rank: usize) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(command)
        .env("RANK", (first_rank(plan) + local_rank).to_string())
        .env("WORLD_SIZE", plan.world_size.to_string())
        .env("LOCAL_RANK", local_rank.to_string())
        .env("LOCAL_WORLD_SIZE", plan.nproc.to_string())
        .env("MASTER_ADDR", &plan.master_addr)
        .env("MASTER_PORT", plan.master_port.to_string())
        .env("DIFFORGE_LAUNCHER", "difforge")
        // A launch inside a torchrun job must not make its children clients of the outer agent's store.
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .env_remove("TORCHELASTIC_RESTART_COUNT");
    cmd
}

/// Waits for every rank. Returns the first failure (rank and status), after stopping the others:
/// SIGTERM, then SIGKILL after the grace period. Signals to the launcher go to every rank.
fn supervise(ranks: &mut [Rank], signals: &Signals) -> anyhow::Result<Option<(usize, ExitStatus)>> {
    let mut failure: Option<(usize, ExitStatus)> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        signals.forward(ranks);
        if let Some((rank, status)) = reap(ranks)? {
            if failure.is_none() {
                tracing::error!("rank {rank} failed ({status}); stopping the other ranks");
                failure = Some((rank, status));
                send(ranks, "TERM");
                kill_at = Some(Instant::now() + GRACE);
            }
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            return Ok(failure);
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            tracing::warn!("ranks still running {} s after SIGTERM; killing them", GRACE.as_secs());
            kill_running(ranks);
            kill_at = None;
        }
        std::thread::sleep(POLL);
    }
}

/// Collects the ranks that have exited; returns the first that failed in this round.
fn reap(ranks: &mut [Rank]) -> anyhow::Result<Option<(usize, ExitStatus)>> {
    let mut failed = None;
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        let status = match r.child.try_wait() {
            Ok(status) => status,
            Err(e) => {
                // Without its status the rank cannot be supervised: stop everything rather than orphan it.
                kill_running(ranks);
                return Err(anyhow::anyhow!("waiting for a rank: {e}"));
            }
        };
        if let Some(status) = status {
            r.status = Some(status);
            if !status.success() && failed.is_none() {
                failed = Some((r.rank, status));
            }
        }
    }
    Ok(failed)
}

/// SIGKILLs and reaps every rank still running.
fn kill_running(ranks: &mut [Rank]) {
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        let _ = r.child.kill();
        r.status = r.child.wait().ok();
    }
}

/// Sends `signal` (TERM, INT) to every rank still running. A rank not yet reaped keeps its pid
/// (as a zombie at worst), so the pid cannot name another process. The `kill` of `sh` sends it:
/// the workspace forbids `unsafe` outside difforge-native, and std can only send SIGKILL.
fn send(ranks: &[Rank], signal: &str) {
    let pids: Vec<String> = ranks.iter().filter(|r| r.status.is_none()).map(|r| r.child.id().to_string()).collect();
    if pids.is_empty() {
        return;
    }
    let sent = Command::new("sh").arg("-c").arg(format!("kill -s {signal} \"$@\"")).arg("sh").args(&pids).status();
    match sent {
        Ok(status) if status.success() => {}
        other => tracing::warn!("could not send SIG{signal} to the ranks ({other:?})"),
    }
}

/// SIGINT and SIGTERM to the launcher, to be passed on to the ranks (each finishes its step,
/// checkpoints and stops, as a single `difforge train` does).
struct Signals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let signals = Signals { int: Arc::new(AtomicBool::new(false)), term: Arc::new(AtomicBool::new(false)) };
        for (signal, flag) in [(signal_hook::consts::SIGINT, &signals.int), (signal_hook::consts::SIGTERM, &signals.term)] {
            signal_hook::flag::register(signal, flag.clone()).map_err(|e| anyhow::anyhow!("installing the signal handler: {e}"))?;
        }
        Ok(signals)
    }

    /// Passes on each signal received since the last call.
    fn forward(&self, ranks: &[Rank]) {
        for (name, flag) in [("INT", &self.int), ("TERM", &self.term)] {
            if flag.swap(false, Ordering::SeqCst) {
                tracing::info!("difforge launch: passing SIG{name} on to the ranks");
                send(ranks, name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses() {
        assert_eq!(parse_master("10.0.0.1:29500").ok(), Some(("10.0.0.1".to_string(), 29500)));
        assert_eq!(parse_master("[::1]:1234").ok(), Some(("::1".to_string(), 1234)));
        assert_eq!(parse_master("node01:80").ok(), Some(("node01".to_string(), 80)));
        for bad in ["node01", ":29500", "h:0", "h:70000", "h:port"] {
            assert!(parse_master(bad).is_err(), "{bad}");
        }
    }
}
