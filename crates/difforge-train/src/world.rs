//! Where this process stands in a multi-process run: its rank, the number of processes, its
//! place on its node and where the rendezvous is. Read from the environment a launcher leaves:
//! torchrun's (also `difforge launch`'s and the Kubeflow training operator's) variables win over
//! SLURM's; with neither, the process is alone.

use difforge_core::ConfigError;
use serde::Serialize;

/// The rendezvous address when no launcher names one (a single process never contacts it).
const DEFAULT_MASTER_ADDR: &str = "127.0.0.1";
/// torchrun's default port, so that a SLURM job without MASTER_PORT meets where users expect.
const DEFAULT_MASTER_PORT: u16 = 29500;

/// Who started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// Nobody: one process.
    Single,
    /// torchrun's variables (torchrun itself, or anything that sets them like it: a PyTorchJob).
    Torchrun,
    /// `srun` of a SLURM job with more than one task.
    Slurm,
    /// `difforge launch`.
    Difforge,
}

impl std::fmt::Display for Launcher {
    /// As in `difforge info` and its JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::Single => "single",
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "slurm",
            Launcher::Difforge => "difforge",
        })
    }
}

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE=True): every rank is a client.
    pub agent_store: bool,
    /// TORCHELASTIC_RESTART_COUNT (the store key prefix "/worker/attempt_{n}" under the agent store).
    pub restart_count: u64,
    pub launcher: Launcher,
}

/// An environment that does not describe a coherent run: which variable, its value, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    #[error("{var} = {value:?}: expected {expected}")]
    Invalid { var: String, value: String, expected: String },
    #[error("{var} = {value:?} is set but {missing} is not: a launcher sets them together")]
    Partial { var: String, value: String, missing: String },
    #[error("{var} is not set: expected {expected}")]
    Missing { var: String, expected: String },
}

impl From<WorldError> for ConfigError {
    /// Bad launcher variables are bad input like a bad flag (exit code 2).
    fn from(e: WorldError) -> ConfigError {
        match e {
            WorldError::Invalid { var, value, expected } => ConfigError::new(var, value, expected),
            WorldError::Partial { var, value, missing } => ConfigError::new(var, value, format!("{missing} to be set too (a launcher sets them together)")),
            WorldError::Missing { var, expected } => ConfigError::problem(var, format!("not set: expected {expected}")),
        }
    }
}

/// A lookup of one environment variable.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

impl World {
    /// One process: rank 0 of 1.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            master_addr: DEFAULT_MASTER_ADDR.to_string(),
            master_port: DEFAULT_MASTER_PORT,
            agent_store: false,
            restart_count: 0,
            launcher: Launcher::Single,
        }
    }

    /// This process's place, from its environment.
    pub fn from_env() -> Result<World, WorldError> {
        // A value that is not UTF-8 is kept (lossily) so that its parse error shows it.
        World::from_vars(&|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// This process's place, from any lookup of variables (tests pass a map).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<World, WorldError> {
        // An empty value counts as unset: `RANK=` is how shells and manifests blank a variable.
        let get = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"].iter().any(|v| get(v).is_some()) {
            return torchrun(&get);
        }
        match get("SLURM_NTASKS") {
            Some(tasks) if parse_count("SLURM_NTASKS", &tasks)? > 1 => slurm(&get),
            // One task (an interactive `salloc` shell, a one-task batch step) is a single process.
            _ => Ok(World::single()),
        }
    }

    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// torchrun's variables (also `difforge launch`'s; a Kubeflow PyTorchJob sets RANK, WORLD_SIZE
/// and the master only, one process per pod).
fn torchrun(get: Vars) -> Result<World, WorldError> {
    if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
        let var = if get("LOCAL_RANK").is_some() { "LOCAL_RANK" } else { "LOCAL_WORLD_SIZE" };
        return Err(WorldError::Partial { var: var.to_string(), value: get(var).unwrap_or_default(), missing: "RANK and WORLD_SIZE".to_string() });
    }
    let rank_text = both(get, "RANK", "WORLD_SIZE")?;
    let size_text = both(get, "WORLD_SIZE", "RANK")?;
    let size = parse_count("WORLD_SIZE", &size_text)?;
    let rank = parse_index("RANK", &rank_text, size, "WORLD_SIZE")?;
    let local_size = get("LOCAL_WORLD_SIZE").map(|v| parse_count("LOCAL_WORLD_SIZE", &v)).transpose()?.unwrap_or(1);
    if local_size > size {
        return Err(invalid("LOCAL_WORLD_SIZE", local_size, format!("at most WORLD_SIZE = {size}")));
    }
    let local_rank = get("LOCAL_RANK").map(|v| parse_index("LOCAL_RANK", &v, local_size, "LOCAL_WORLD_SIZE")).transpose()?.unwrap_or(0);
    let launcher = launcher(get)?;
    // A nested `difforge launch` inherits torchrun's variables; they describe the outer agent.
    let elastic = launcher == Launcher::Torchrun;
    Ok(World {
        rank,
        size,
        local_rank,
        local_size,
        master_addr: master_addr(get, size, None)?,
        master_port: master_port(get, size > 1)?,
        agent_store: elastic && agent_store(get)?,
        restart_count: if elastic { restart_count(get)? } else { 0 },
        launcher,
    })
}

/// `srun`'s variables, for a step of more than one task.
fn slurm(get: Vars) -> Result<World, WorldError> {
    let size = parse_count("SLURM_NTASKS", &get("SLURM_NTASKS").unwrap_or_default())?;
    let rank = parse_index("SLURM_PROCID", &both(get, "SLURM_PROCID", "SLURM_NTASKS")?, size, "SLURM_NTASKS")?;
    let local_size = slurm_local_size(get)?;
    let local_rank = parse_index("SLURM_LOCALID", &both(get, "SLURM_LOCALID", "SLURM_NTASKS")?, local_size, "the tasks on this node")?;
    let first_host = match get("SLURM_JOB_NODELIST").map(|v| ("SLURM_JOB_NODELIST", v)).or_else(|| get("SLURM_NODELIST").map(|v| ("SLURM_NODELIST", v))) {
        Some((var, list)) => Some(first_host(var, &list)?),
        None => None,
    };
    Ok(World {
        rank,
        size,
        local_rank,
        local_size,
        master_addr: master_addr(get, size, first_host)?,
        master_port: master_port(get, false)?,
        agent_store: false,
        restart_count: 0,
        launcher: Launcher::Slurm,
    })
}

/// The number of tasks on this node: SLURM_NTASKS_PER_NODE (set by --ntasks-per-node), else
/// this node's entry of SLURM_TASKS_PER_NODE.
fn slurm_local_size(get: Vars) -> Result<usize, WorldError> {
    let (var, text) = match get("SLURM_NTASKS_PER_NODE") {
        Some(v) => ("SLURM_NTASKS_PER_NODE", v),
        None => ("SLURM_TASKS_PER_NODE", both(get, "SLURM_TASKS_PER_NODE", "SLURM_NTASKS")?),
    };
    let node = get("SLURM_NODEID").map(|v| parse_number("SLURM_NODEID", &v)).transpose()?.unwrap_or(0);
    let counts = tasks_per_node(var, &text)?;
    counts.get(node).copied().ok_or_else(|| invalid(var, &text, format!("an entry for SLURM_NODEID = {node}")))
}

/// SLURM's per-node task counts, `4(x2),3` -> [4, 4, 3].
fn tasks_per_node(var: &str, text: &str) -> Result<Vec<usize>, WorldError> {
    let bad = || invalid(var, text, "task counts per node such as 4, 4(x2) or 4(x2),3");
    let mut counts = Vec::new();
    for entry in text.split(',') {
        let (count, repeat) = match entry.split_once("(x") {
            Some((count, rest)) => (count, rest.strip_suffix(')').ok_or_else(bad)?.parse::<usize>().map_err(|_| bad())?),
            None => (entry, 1),
        };
        let count = count.parse::<usize>().ok().filter(|&c| c > 0).ok_or_else(bad)?;
        counts.extend(std::iter::repeat_n(count, repeat));
    }
    Ok(counts)
}

/// The first host of a SLURM node list in its compressed form: `node[01-04,07],gpu7` -> `node01`,
/// `a-[3-5]` -> `a-3`, `host1,host2` -> `host1`.
pub fn first_host(var: &str, list: &str) -> Result<String, WorldError> {
    let bad = || invalid(var, list, "a SLURM node list such as node[01-04,07],gpu7");
    let mut host = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => host.push_str(&first_of_range(&mut chars).ok_or_else(bad)?),
            ']' => return Err(bad()),
            c => host.push(c),
        }
    }
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

/// The first value of a bracketed range list (after its `[`), consuming up to its `]`:
/// `01-04,07]` -> `01`, as written (SLURM keeps the zero padding in host names).
fn first_of_range(chars: &mut std::str::Chars<'_>) -> Option<String> {
    let mut inside = String::new();
    loop {
        match chars.next()? {
            ']' => break,
            c => inside.push(c),
        }
    }
    let first = inside.split(',').next()?.split('-').next()?;
    (!first.is_empty() && first.chars().all(|c| c.is_ascii_digit())).then(|| first.to_string())
}

/// Which launcher set torchrun's variables: `difforge launch` marks itself.
fn launcher(get: Vars) -> Result<Launcher, WorldError> {
    match get("DIFFORGE_LAUNCHER").as_deref() {
        None => Ok(Launcher::Torchrun),
        Some("difforge") => Ok(Launcher::Difforge),
        Some(other) => Err(invalid("DIFFORGE_LAUNCHER", other, "difforge (set by difforge launch) or unset")),
    }
}

/// MASTER_ADDR, else the first SLURM host; a run of one process needs neither.
fn master_addr(get: Vars, size: usize, slurm_host: Option<String>) -> Result<String, WorldError> {
    match get("MASTER_ADDR").or(slurm_host) {
        Some(addr) => Ok(addr),
        None if size == 1 => Ok(DEFAULT_MASTER_ADDR.to_string()),
        None => Err(missing("MASTER_ADDR", format!("the rendezvous host of this run of {size} processes (under SLURM: or SLURM_JOB_NODELIST)"))),
    }
}

/// MASTER_PORT, else 29500 (unless `required`: torchrun always sets it, so its absence means a
/// hand-made environment that would meet on a port nobody chose).
fn master_port(get: Vars, required: bool) -> Result<u16, WorldError> {
    match get("MASTER_PORT") {
        Some(text) => text.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| invalid("MASTER_PORT", &text, "a port in 1..=65535")),
        None if required => Err(missing("MASTER_PORT", "the rendezvous port of this run (torchrun sets it with MASTER_ADDR)")),
        None => Ok(DEFAULT_MASTER_PORT),
    }
}

/// TORCHELASTIC_USE_AGENT_STORE, which torchrun writes as Python's `True`/`False`.
fn agent_store(get: Vars) -> Result<bool, WorldError> {
    match get("TORCHELASTIC_USE_AGENT_STORE").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(invalid("TORCHELASTIC_USE_AGENT_STORE", get("TORCHELASTIC_USE_AGENT_STORE").unwrap_or_default(), "True or False")),
    }
}

fn restart_count(get: Vars) -> Result<u64, WorldError> {
    get("TORCHELASTIC_RESTART_COUNT")
        .map(|v| v.parse::<u64>().map_err(|_| invalid("TORCHELASTIC_RESTART_COUNT", &v, "a whole number >= 0")))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// `var`'s value, which must be set because `partner` is (or `partner` implies it).
fn both(get: Vars, var: &str, partner: &str) -> Result<String, WorldError> {
    get(var).ok_or_else(|| {
        let value = get(partner).unwrap_or_default();
        WorldError::Partial { var: partner.to_string(), value, missing: var.to_string() }
    })
}

fn parse_number(var: &str, text: &str) -> Result<usize, WorldError> {
    text.parse::<usize>().map_err(|_| invalid(var, text, "a whole number >= 0"))
}

/// A number of processes: at least 1.
fn parse_count(var: &str, text: &str) -> Result<usize, WorldError> {
    text.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| invalid(var, text, "a whole number >= 1"))
}

/// An index below `bound` (the value of `bound_name`).
fn parse_index(var: &str, text: &str, bound: usize, bound_name: &str) -> Result<usize, WorldError> {
    let index = parse_number(var, text)?;
    if index >= bound {
        return Err(invalid(var, text, format!("less than {bound_name} = {bound}")));
    }
    Ok(index)
}

fn invalid(var: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> WorldError {
    WorldError::Invalid { var: var.to_string(), value: value.to_string(), expected: expected.into() }
}

fn missing(var: &str, expected: impl Into<String>) -> WorldError {
    WorldError::Missing { var: var.to_string(), expected: expected.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<World, WorldError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        World::from_vars(&|name| map.get(name).cloned())
    }

    /// The error's text, which must name the variable and its value.
    fn error(vars: &[(&str, &str)]) -> String {
        match world(vars) {
            Ok(w) => panic!("expected an error, got {w:?}"),
            Err(e) => e.to_string(),
        }
    }

    const TORCHRUN: [(&str, &str); 6] =
        [("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "4"), ("MASTER_ADDR", "10.0.0.2"), ("MASTER_PORT", "29400")];

    fn with(base: &[(&'static str, &'static str)], extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut vars: Vec<_> = base.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).copied().collect();
        vars.extend(extra.iter().filter(|(_, v)| !v.is_empty()).copied());
        vars
    }

    #[test]
    fn no_launcher_is_a_single_process() {
        let w = world(&[]).unwrap();
        assert_eq!(w, World::single());
        assert_eq!((w.rank, w.size, w.master_addr.as_str(), w.master_port, w.launcher), (0, 1, "127.0.0.1", 29500, Launcher::Single));
        assert!(!w.is_distributed() && w.is_main());
    }

    #[test]
    fn torchrun_variables_are_read() {
        let w = world(&TORCHRUN).unwrap();
        assert_eq!((w.rank, w.size, w.local_rank, w.local_size), (5, 8, 1, 4));
        assert_eq!((w.master_addr.as_str(), w.master_port), ("10.0.0.2", 29400));
        assert_eq!((w.launcher, w.agent_store, w.restart_count), (Launcher::Torchrun, false, 0));
        assert!(w.is_distributed() && !w.is_main());
    }

    #[test]
    fn torchrun_agent_store_and_restart_count() {
        let w = world(&with(&TORCHRUN, &[("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "3")])).unwrap();
        assert!(w.agent_store);
        assert_eq!(w.restart_count, 3);
        assert!(!world(&with(&TORCHRUN, &[("TORCHELASTIC_USE_AGENT_STORE", "False")])).unwrap().agent_store);
        assert!(error(&with(&TORCHRUN, &[("TORCHELASTIC_USE_AGENT_STORE", "maybe")])).contains("TORCHELASTIC_USE_AGENT_STORE = \"maybe\""));
        assert!(error(&with(&TORCHRUN, &[("TORCHELASTIC_RESTART_COUNT", "-1")])).contains("TORCHELASTIC_RESTART_COUNT"));
    }

    #[test]
    fn difforge_launch_marks_itself_and_ignores_an_outer_agent() {
        let vars = with(&TORCHRUN, &[("DIFFORGE_LAUNCHER", "difforge"), ("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]);
        let w = world(&vars).unwrap();
        assert_eq!((w.launcher, w.agent_store, w.restart_count), (Launcher::Difforge, false, 0));
        assert!(error(&with(&TORCHRUN, &[("DIFFORGE_LAUNCHER", "mpirun")])).contains("DIFFORGE_LAUNCHER = \"mpirun\""));
    }

    #[test]
    fn a_pytorchjob_pod_needs_no_local_variables() {
        // The Kubeflow training operator sets RANK, WORLD_SIZE and the master: one process per pod.
        let w = world(&[("RANK", "2"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "job-master-0"), ("MASTER_PORT", "23456")]).unwrap();
        assert_eq!((w.rank, w.size, w.local_rank, w.local_size), (2, 3, 0, 1));
        assert_eq!(w.master_addr, "job-master-0");
    }

    #[test]
    fn torchrun_variables_win_over_slurm() {
        let w = world(&with(&TORCHRUN, &[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "1"), ("SLURM_TASKS_PER_NODE", "2")])).unwrap();
        assert_eq!((w.rank, w.launcher), (5, Launcher::Torchrun));
    }

    #[test]
    fn torchrun_errors_name_the_variable_value_and_expectation() {
        let e = error(&with(&TORCHRUN, &[("RANK", "8")]));
        assert!(e.contains("RANK = \"8\"") && e.contains("less than WORLD_SIZE = 8"), "{e}");
        let e = error(&with(&TORCHRUN, &[("WORLD_SIZE", "eight")]));
        assert!(e.contains("WORLD_SIZE = \"eight\"") && e.contains("whole number"), "{e}");
        assert!(error(&with(&TORCHRUN, &[("WORLD_SIZE", "0")])).contains("WORLD_SIZE = \"0\""));
        assert!(error(&with(&TORCHRUN, &[("LOCAL_RANK", "4")])).contains("less than LOCAL_WORLD_SIZE = 4"));
        assert!(error(&with(&TORCHRUN, &[("LOCAL_WORLD_SIZE", "16")])).contains("at most WORLD_SIZE = 8"));
        for port in ["0", "65536", "http"] {
            let e = error(&with(&TORCHRUN, &[("MASTER_PORT", port)]));
            assert!(e.contains(&format!("MASTER_PORT = \"{port}\"")) && e.contains("1..=65535"), "{e}");
        }
    }

    #[test]
    fn partial_torchrun_sets_are_refused() {
        let e = error(&[("RANK", "1")]);
        assert!(e.contains("RANK = \"1\"") && e.contains("WORLD_SIZE is not"), "{e}");
        assert!(error(&[("WORLD_SIZE", "4")]).contains("RANK is not"));
        assert!(error(&[("LOCAL_RANK", "0")]).contains("RANK and WORLD_SIZE"));
        // Several processes cannot meet without a rendezvous address.
        assert!(error(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR is not set"));
        assert!(error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).contains("MASTER_PORT is not set"));
        // One process needs none.
        assert_eq!(world(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().master_port, 29500);
    }

    #[test]
    fn empty_values_count_as_unset() {
        assert_eq!(world(&[("RANK", ""), ("WORLD_SIZE", " ")]).unwrap(), World::single());
    }

    const SLURM: [(&str, &str); 5] =
        [("SLURM_NTASKS", "8"), ("SLURM_PROCID", "6"), ("SLURM_LOCALID", "2"), ("SLURM_TASKS_PER_NODE", "4(x2)"), ("SLURM_JOB_NODELIST", "gpu[07-08]")];

    #[test]
    fn slurm_variables_are_read() {
        let w = world(&SLURM).unwrap();
        assert_eq!((w.rank, w.size, w.local_rank, w.local_size), (6, 8, 2, 4));
        assert_eq!((w.master_addr.as_str(), w.master_port, w.launcher), ("gpu07", 29500, Launcher::Slurm));
        let w = world(&with(&SLURM, &[("MASTER_ADDR", "login1"), ("MASTER_PORT", "12345")])).unwrap();
        assert_eq!((w.master_addr.as_str(), w.master_port), ("login1", 12345));
        let w = world(&with(&SLURM, &[("SLURM_JOB_NODELIST", ""), ("SLURM_NODELIST", "a-[3-5]")])).unwrap();
        assert_eq!(w.master_addr, "a-3");
    }

    #[test]
    fn slurm_tasks_per_node_of_this_node() {
        let uneven = [("SLURM_TASKS_PER_NODE", "3(x2),2"), ("SLURM_NTASKS", "8"), ("SLURM_PROCID", "7"), ("SLURM_LOCALID", "1")];
        assert_eq!(world(&with(&SLURM, &with(&uneven, &[("SLURM_NODEID", "2")]))).unwrap().local_size, 2);
        assert_eq!(world(&with(&SLURM, &with(&uneven, &[("SLURM_NODEID", "1")]))).unwrap().local_size, 3);
        // --ntasks-per-node's variable wins.
        assert_eq!(world(&with(&SLURM, &[("SLURM_NTASKS_PER_NODE", "4"), ("SLURM_TASKS_PER_NODE", "1(x8)")])).unwrap().local_size, 4);
        assert_eq!(tasks_per_node("V", "4(x2),3").unwrap(), vec![4, 4, 3]);
        for bad in ["", "4(x2", "x", "0", "4(2)"] {
            assert!(tasks_per_node("V", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_slurm_task_is_a_single_process() {
        let w = world(&[("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0"), ("SLURM_JOB_NODELIST", "n1")]).unwrap();
        assert_eq!(w, World::single());
        assert!(error(&[("SLURM_NTASKS", "many")]).contains("SLURM_NTASKS = \"many\""));
    }

    #[test]
    fn slurm_errors_name_the_variable() {
        assert!(error(&with(&SLURM, &[("SLURM_PROCID", "8")])).contains("SLURM_PROCID = \"8\""));
        assert!(error(&with(&SLURM, &[("SLURM_PROCID", "")])).contains("SLURM_PROCID is not"));
        assert!(error(&with(&SLURM, &[("SLURM_LOCALID", "4")])).contains("SLURM_LOCALID = \"4\""));
        assert!(error(&with(&SLURM, &[("SLURM_TASKS_PER_NODE", "four")])).contains("SLURM_TASKS_PER_NODE = \"four\""));
        assert!(error(&with(&SLURM, &[("SLURM_JOB_NODELIST", "gpu[07-08")])).contains("SLURM_JOB_NODELIST = \"gpu[07-08\""));
        assert!(error(&with(&SLURM, &[("SLURM_JOB_NODELIST", "")])).contains("MASTER_ADDR is not set"));
    }

    #[test]
    fn first_host_of_compressed_node_lists() {
        for (list, host) in [
            ("node[01-04,07],gpu7", "node01"),
            ("a-[3-5]", "a-3"),
            ("host1,host2", "host1"),
            ("solo", "solo"),
            ("gpu[7,9]", "gpu7"),
            ("rack[2-3]-n[001-004]", "rack2-n001"),
            ("n[10-11]-ib,m1", "n10-ib"),
        ] {
            assert_eq!(first_host("SLURM_JOB_NODELIST", list).unwrap(), host, "{list}");
        }
        for bad in ["", ",a", "n[", "n[]", "n]1", "n[a-b]"] {
            assert!(first_host("SLURM_JOB_NODELIST", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn world_errors_are_bad_input() {
        let e: ConfigError = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err().into();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("RANK", "x"));
    }
}
