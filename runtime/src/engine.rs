//! The sandbox: one wasmtime engine with the pooling allocator, compiled plugins cached in
//! memory and on disk, and a fresh store per call with a deadline and memory and output caps.
//! Nothing is compiled until the kernel asks ([`Runtime::load`]); the kernel evicts what no
//! installation uses ([`Runtime::retain_loaded`], [`Runtime::prune_disk_cache`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::manifest::Capability;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::contract::{self, ContractVersion, Instance, Pre};
use crate::host::{
    HostServices, HttpRequest, HttpResponse, PluginEvent, PluginRecord, ScheduleTick, Score,
};
use crate::integration::Quotas;
use crate::manifest::{Grants, Limits};
use crate::package::hex;

/// How the runtime is set up; the provider's maximums cap every manifest's limits.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled plugins are kept between restarts. `None`: memory only.
    pub cache_dir: Option<PathBuf>,
    /// The most any plugin may ask for.
    pub max_limits: Limits,
    /// Instances that can run at once; a call past this waits for none and fails `busy`.
    pub instances: u32,
    /// Epoch tick: the granularity of deadlines.
    pub tick: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_limits: Limits {
                timeout_ms: 2_000,
                memory_mb: 64,
                output_kb: 256,
            },
            instances: 128,
            tick: Duration::from_millis(1),
        }
    }
}

/// A hook call and its input.
#[derive(Debug, Clone)]
pub enum Call {
    ScoreLead(PluginRecord),
    OnEvent(PluginEvent),
    RunAction {
        name: String,
        input: String,
    },
    HandleWebhook(HttpRequest),
    /// Since contract 0.2.0; a 0.1.0 plugin answers `not-supported`.
    OnSchedule(ScheduleTick),
}

impl Call {
    pub fn hook(&self) -> crate::Hook {
        match self {
            Call::ScoreLead(_) => crate::Hook::ScoreLead,
            Call::OnEvent(_) => crate::Hook::OnEvent,
            Call::RunAction { .. } => crate::Hook::RunAction,
            Call::HandleWebhook(_) => crate::Hook::HandleWebhook,
            Call::OnSchedule(_) => crate::Hook::OnSchedule,
        }
    }
}

/// A hook's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Score(Score),
    Done,
    Output(String),
    Webhook(HttpResponse),
}

impl Reply {
    fn size(&self) -> usize {
        match self {
            Reply::Score(s) => s.reasons.iter().map(|r| r.len() + 4).sum::<usize>() + 16,
            Reply::Done => 0,
            Reply::Output(s) => s.len(),
            Reply::Webhook(r) => {
                r.body.len()
                    + r.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 4)
                        .sum::<usize>()
            }
        }
    }
}

/// Why a call produced no answer. Every variant is the plugin's failure, not the host's:
/// the host keeps serving.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    #[error("timed out after {elapsed_ms} ms (limit {limit_ms} ms)")]
    Timeout { limit_ms: u32, elapsed_ms: u64 },
    #[error("went over its memory limit of {limit_mb} MiB")]
    MemoryLimit { limit_mb: u32 },
    #[error("overflowed its stack (too deep recursion)")]
    StackOverflow,
    #[error("panicked: {0}")]
    Panic(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {size} bytes, over its output limit of {limit} bytes")]
    OutputTooLarge { size: usize, limit: usize },
    #[error("does not support this hook")]
    NotSupported,
    #[error("refused the input: {0}")]
    InvalidInput(String),
    #[error("failed: {0}")]
    Failed(String),
    /// The plugin could not do the work now; the same call may succeed later.
    #[error("asked to be retried later: {0}")]
    RetryLater(String),
    #[error("could not start: every sandbox slot is in use; try again")]
    Busy,
    #[error("could not be loaded: {0}")]
    Load(String),
}

impl Failure {
    /// What kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Timeout { .. } => FailureKind::Timeout,
            Failure::MemoryLimit { .. } => FailureKind::MemoryLimit,
            Failure::StackOverflow => FailureKind::StackOverflow,
            Failure::Panic(_) => FailureKind::Panic,
            Failure::Trap(_) => FailureKind::Trap,
            Failure::OutputTooLarge { .. } => FailureKind::OutputTooLarge,
            Failure::NotSupported => FailureKind::NotSupported,
            Failure::InvalidInput(_) => FailureKind::InvalidInput,
            Failure::Failed(_) => FailureKind::Failed,
            Failure::RetryLater(_) => FailureKind::RetryLater,
            Failure::Busy => FailureKind::Busy,
            Failure::Load(_) => FailureKind::Load,
        }
    }
}

/// The kinds of failed plugin calls: those of [`Failure`], and `circuit_open` (a call the
/// host refused to make because the plugin failed repeatedly). Their names are stable: they
/// appear in metrics, health views, deliveries and API errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Timeout,
    MemoryLimit,
    StackOverflow,
    Panic,
    Trap,
    OutputTooLarge,
    NotSupported,
    InvalidInput,
    Failed,
    RetryLater,
    Busy,
    Load,
    CircuitOpen,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Panic => "panic",
            FailureKind::Trap => "trap",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::NotSupported => "not_supported",
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::Failed => "failed",
            FailureKind::RetryLater => "retry_later",
            FailureKind::Busy => "busy",
            FailureKind::Load => "load",
            FailureKind::CircuitOpen => "circuit_open",
        }
    }

    /// Whether the same call may succeed later: the host's state (its capacity, a paused
    /// plugin, a slow compile, a deadline on a loaded machine) may change, and so may the
    /// external service a plugin said to retry later for; a plugin's own failure or a
    /// broken limit will not.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::Timeout
                | FailureKind::Busy
                | FailureKind::CircuitOpen
                | FailureKind::Load
                | FailureKind::RetryLater
        )
    }

    /// Whether the host, not the plugin, is the cause (capacity, a paused plugin): such a
    /// failure does not count against the plugin's health.
    pub fn is_capacity(self) -> bool {
        matches!(self, FailureKind::Busy | FailureKind::CircuitOpen)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything one call needs besides the plugin: its tenant's config, grants and limits,
/// and storage bound to that tenant and plugin.
pub struct Invocation {
    /// Shown on the plugin's log lines.
    pub tenant: String,
    pub plugin: String,
    pub version: String,
    /// The configuration handed to `config.get` (secrets left out).
    pub config: String,
    pub grants: Grants,
    /// Already capped by the provider's maximums.
    pub limits: Limits,
    /// What the call may do through host calls (HTTP, records, events).
    pub quotas: Quotas,
    /// The whole call's wall-clock cap, host calls included (see [`Quotas::wall_for`]).
    pub wall: Duration,
    pub services: Arc<dyn HostServices>,
}

/// A compiled plugin ready to instantiate.
pub struct Loaded {
    pre: Pre,
    pub sha256: String,
}

/// Per-call state inside the store.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) call: Arc<Invocation>,
    pub(crate) log_lines: u32,
    /// When the current call started (wall clock, and this thread's CPU time), and how
    /// much of each was spent in host calls.
    pub(crate) started: Instant,
    pub(crate) cpu_started: Duration,
    pub(crate) host_time: Duration,
    pub(crate) host_cpu: Duration,
    /// Refused capability calls of this call: capability, operation and the repeats not
    /// yet audited (the first of each is audited when it happens).
    pub(crate) denials: Vec<(Capability, String, u32)>,
    /// What the call used of its quotas so far.
    pub(crate) used: Used,
}

/// Quota use of one call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Used {
    pub(crate) http_requests: u32,
    pub(crate) http_bytes: u64,
    pub(crate) record_reads: u32,
    pub(crate) record_writes: u32,
    pub(crate) events: u32,
}

impl HostState {
    /// Audits the refusals counted but not yet written, once per capability and operation.
    fn flush_denials(&mut self) {
        for (cap, operation, repeats) in std::mem::take(&mut self.denials) {
            if repeats > 0 {
                self.call.services.denied(cap, &operation, repeats);
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory cap that remembers it refused, so a failed allocation is reported as a memory
/// limit rather than a bare trap.
pub(crate) struct Limiter {
    memory_bytes: usize,
    refused: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_bytes && maximum.is_none_or(|m| desired <= m);
        if !allowed {
            self.refused = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000 && maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        16
    }
    fn tables(&self) -> usize {
        16
    }
    fn memories(&self) -> usize {
        4
    }
}

/// The plugin runtime. Cheap to share behind an `Arc`; calls run on the caller's thread.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let max = config.max_limits;
        let memory_bytes = (max.memory_mb as usize) << 20;
        let slots = config.instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_core_instances_per_component(8)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_memory_size(memory_bytes)
            // Keeping the first pages of each slot mapped between instances saves the
            // kernel round trip that otherwise dominates a fresh instance per call.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // Where the kernel can say which kept pages an instance dirtied, only those are
            // reset: otherwise every kept page is cleared on every store drop.
            .pagemap_scan(Enabled::Auto);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(wasmtime_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(wasmtime_error)?;
        contract::add_to_linker(&mut linker).map_err(wasmtime_error)?;

        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.tick;
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })?;
        }
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("plugin cache {}: {e}", dir.display()))?;
        }
        Ok(Runtime {
            engine,
            linker,
            config,
            loaded: RwLock::new(HashMap::new()),
            stop,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Compile (or load from the disk cache) a package's component and link it against
    /// this host. Slow the first time for a given package: call it off the request path.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Loaded>, Failure> {
        let sha256 = hex(&Sha256::digest(bytes));
        if let Some(loaded) = self.loaded(&sha256) {
            return Ok(loaded);
        }
        let component = self.compile_cached(bytes, &sha256)?;
        let version = ContractVersion::of(&component, &self.engine).map_err(Failure::Load)?;
        let pre = Pre::new(version, &self.linker, &component)
            .map_err(|e| Failure::Load(format!("{e:#}")))?;
        let loaded = Arc::new(Loaded {
            pre,
            sha256: sha256.clone(),
        });
        let mut map = self.loaded.write().unwrap();
        map.insert(sha256, loaded.clone());
        metrics::gauge!("streamflow_plugin_compiled_in_memory").set(map.len() as f64);
        Ok(loaded)
    }

    /// Whether a package is compiled and in memory.
    pub fn is_loaded(&self, sha256: &str) -> bool {
        self.loaded.read().unwrap().contains_key(sha256)
    }

    /// Whether this node's disk cache holds the package compiled for this engine.
    pub fn is_cached(&self, sha256: &str) -> bool {
        self.cache_path(sha256).is_some_and(|p| p.exists())
    }

    /// How many compiled packages are in memory.
    pub fn loaded_count(&self) -> usize {
        self.loaded.read().unwrap().len()
    }

    /// Drops from memory every compiled package whose hash `keep` does not name; returns
    /// how many were dropped. Calls already running keep their copy until they finish.
    pub fn retain_loaded(&self, keep: &HashSet<String>) -> usize {
        let mut loaded = self.loaded.write().unwrap();
        let before = loaded.len();
        loaded.retain(|sha, _| keep.contains(sha));
        let evicted = before - loaded.len();
        metrics::gauge!("streamflow_plugin_compiled_in_memory").set(loaded.len() as f64);
        if evicted > 0 {
            metrics::counter!("streamflow_plugin_evictions_total", "from" => "memory")
                .increment(evicted as u64);
        }
        evicted
    }

    /// Deletes from the disk cache this engine's compiled packages whose hash is in
    /// `remove`. Files compiled by another engine configuration or version are left alone:
    /// another process sharing the directory (a node with other plugin limits, a test
    /// server) may still load them. Files the cache does not recognise are left alone too.
    /// Returns how many were deleted.
    pub fn prune_disk_cache(&self, remove: &HashSet<String>) -> usize {
        let Some(dir) = &self.config.cache_dir else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let engine_key = self.engine_key();
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".cwasm")) else {
                continue;
            };
            let Some((sha, key)) = stem.split_once('-') else {
                continue;
            };
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if remove.contains(sha) && key == engine_key {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => deleted += 1,
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "could not delete a cached compiled plugin")
                    }
                }
            }
        }
        if deleted > 0 {
            metrics::counter!("streamflow_plugin_evictions_total", "from" => "disk")
                .increment(deleted as u64);
        }
        deleted
    }

    /// The engine's compatibility hash, as the cache file names carry it.
    fn engine_key(&self) -> String {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut hasher);
        format!("{:016x}", std::hash::Hasher::finish(&hasher))
    }

    /// Where the disk cache keeps this package compiled, if there is a disk cache.
    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        // The name covers the engine's settings and version, so an upgrade or a changed
        // setting never loads a stale artifact.
        let dir = self.config.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.engine_key())))
    }

    /// The compiled package with this hash, if it is in memory: what a call needs, without
    /// reading or hashing the package again.
    pub fn loaded(&self, sha256: &str) -> Option<Arc<Loaded>> {
        self.loaded.read().unwrap().get(sha256).cloned()
    }

    fn compile_cached(&self, bytes: &[u8], sha256: &str) -> Result<Component, Failure> {
        let Some(path) = self.cache_path(sha256) else {
            return self.compile(bytes, sha256);
        };
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this engine
            // configuration into a directory only the server writes; the name carries the
            // package hash and the engine's compatibility hash.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable compiled plugin")
                }
            }
        }
        let component = self.compile(bytes, sha256)?;
        match component.serialize() {
            Ok(artifact) => {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if let Err(e) =
                    std::fs::write(&tmp, artifact).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(path = %path.display(), error = %e, "could not cache compiled plugin");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not serialise compiled plugin"),
        }
        Ok(component)
    }

    fn compile(&self, bytes: &[u8], sha256: &str) -> Result<Component, Failure> {
        let started = Instant::now();
        let result =
            Component::new(&self.engine, bytes).map_err(|e| Failure::Load(format!("{e:#}")));
        metrics::counter!("streamflow_plugin_compilations_total",
            "outcome" => if result.is_ok() { "ok" } else { "failed" })
        .increment(1);
        tracing::info!(
            sha256,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "compiled plugin"
        );
        result
    }

    /// Run one hook in a fresh instance. Blocks the calling thread for at most about the
    /// invocation's deadline (plus the time host calls take).
    pub fn invoke(
        &self,
        loaded: &Loaded,
        invocation: Arc<Invocation>,
        call: Call,
    ) -> Result<Reply, Failure> {
        let limits = invocation.limits.capped_by(self.config.max_limits);
        let (mut store, stderr) = self.new_store(invocation, limits);
        let started = Instant::now();
        let result = loaded.pre.call(&mut store, call);
        store.data_mut().flush_denials();
        finish(result, &store, &stderr, limits, started)
    }

    /// An instance kept across calls. The server never does this (every call gets a fresh
    /// instance, so nothing leaks between calls); it exists to measure what isolation costs.
    pub fn warm_instance(
        &self,
        loaded: &Loaded,
        invocation: Arc<Invocation>,
    ) -> Result<WarmInstance, Failure> {
        let limits = invocation.limits.capped_by(self.config.max_limits);
        let (mut store, stderr) = self.new_store(invocation, limits);
        let plugin = loaded
            .pre
            .instantiate(&mut store)
            .map_err(|e| Failure::Load(format!("{e:#}")))?;
        Ok(WarmInstance {
            store,
            plugin,
            stderr,
            limits,
            tick_ms: self.tick_ms(),
        })
    }

    fn tick_ms(&self) -> u64 {
        self.config.tick.as_millis().max(1) as u64
    }

    fn new_store(
        &self,
        invocation: Arc<Invocation>,
        limits: Limits,
    ) -> (Store<HostState>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(4096);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let wall_cap = invocation.wall;
        let state = HostState {
            used: Used::default(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: (limits.memory_mb as usize) << 20,
                refused: false,
            },
            call: invocation,
            log_lines: 0,
            started: Instant::now(),
            cpu_started: thread_cpu(),
            host_time: Duration::ZERO,
            host_cpu: Duration::ZERO,
            denials: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let tick = self.config.tick.max(Duration::from_millis(1));
        let limit = Duration::from_millis(limits.timeout_ms as u64);
        store.set_epoch_deadline(ticks_for(limit, tick));
        // The deadline is on the plugin's own time: the CPU time of the thread running it,
        // less what the host spent serving its calls. Time spent waiting for a CPU on a
        // loaded machine, or for a commit in a host call, is not the plugin's. Wall-clock
        // time outside host calls is bounded too, at a few times the limit, so a plugin that
        // sleeps (WASI clocks) instead of computing cannot hold its instance; and the whole
        // call at the invocation's wall-clock cap. The checks run when the guest runs: a
        // host call itself is bounded by its own timeout, which never outlasts the cap.
        let idle_cap = limit * IDLE_FACTOR;
        store.epoch_deadline_callback(move |ctx| {
            let state = ctx.data();
            let wall = state.started.elapsed();
            let own = own_cpu(state, wall);
            let outside_host = wall.saturating_sub(state.host_time);
            if own >= limit || outside_host >= idle_cap || wall >= wall_cap {
                return Err(Trap::Interrupt.into());
            }
            let next = (limit - own).min(idle_cap - outside_host);
            Ok(UpdateDeadline::Continue(ticks_for(next, tick)))
        });
        (store, stderr)
    }
}

/// How many times its limit a call may spend outside host calls, by the wall clock (CPU
/// time and time spent waiting for a core included), before it is stopped.
const IDLE_FACTOR: u32 = 3;

/// CPU time the calling thread has used so far (zero where the platform cannot say).
pub(crate) fn thread_cpu() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the
        // platform defines.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

/// The plugin's own time so far in a call: its thread's CPU time less the host's, or, where
/// thread CPU time cannot be read, the wall-clock time less the host's.
fn own_cpu(state: &HostState, wall: Duration) -> Duration {
    let cpu = thread_cpu();
    if cpu.is_zero() {
        return wall.saturating_sub(state.host_time);
    }
    cpu.saturating_sub(state.cpu_started)
        .saturating_sub(state.host_cpu)
}

/// Epoch ticks covering `time` (one more, so a deadline never comes early).
fn ticks_for(time: Duration, tick: Duration) -> u64 {
    (time.as_millis() as u64).div_ceil(tick.as_millis().max(1) as u64) + 1
}

/// See [`Runtime::warm_instance`].
pub struct WarmInstance {
    store: Store<HostState>,
    plugin: Instance,
    stderr: MemoryOutputPipe,
    limits: Limits,
    tick_ms: u64,
}

impl WarmInstance {
    pub fn call(&mut self, call: Call) -> Result<Reply, Failure> {
        let ticks = (self.limits.timeout_ms as u64).div_ceil(self.tick_ms) + 1;
        self.store.set_epoch_deadline(ticks);
        let state = self.store.data_mut();
        state.started = Instant::now();
        state.cpu_started = thread_cpu();
        state.host_time = Duration::ZERO;
        state.host_cpu = Duration::ZERO;
        state.used = Used::default();
        let started = Instant::now();
        let result = self.plugin.call(&mut self.store, call);
        self.store.data_mut().flush_denials();
        finish(result, &self.store, &self.stderr, self.limits, started)
    }
}

/// Turns a call's result into the reply or the failure, checking the output cap.
fn finish(
    result: wasmtime::Result<Result<Reply, Failure>>,
    store: &Store<HostState>,
    stderr: &MemoryOutputPipe,
    limits: Limits,
    started: Instant,
) -> Result<Reply, Failure> {
    let reply = match result {
        Ok(Ok(reply)) => reply,
        Ok(Err(plugin_failure)) => return Err(plugin_failure),
        Err(error) => return Err(classify(error, store, stderr, limits, started)),
    };
    let limit = (limits.output_kb as usize) << 10;
    let size = reply.size();
    if size > limit {
        return Err(Failure::OutputTooLarge { size, limit });
    }
    Ok(reply)
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn classify(
    error: wasmtime::Error,
    store: &Store<HostState>,
    stderr: &MemoryOutputPipe,
    limits: Limits,
    started: Instant,
) -> Failure {
    if store.data().limiter.refused {
        return Failure::MemoryLimit {
            limit_mb: limits.memory_mb,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout {
            limit_ms: limits.timeout_ms,
            elapsed_ms: started.elapsed().as_millis() as u64,
        },
        Some(Trap::StackOverflow) => Failure::StackOverflow,
        Some(Trap::AllocationTooLarge) => Failure::MemoryLimit {
            limit_mb: limits.memory_mb,
        },
        Some(trap) => {
            let output = String::from_utf8_lossy(&stderr.contents()).into_owned();
            match output.find("panicked") {
                // "panicked at src/lib.rs:10:5:" then the message on the next line.
                Some(at) => Failure::Panic(
                    output[at..]
                        .lines()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                        .chars()
                        .take(300)
                        .collect(),
                ),
                None => Failure::Trap(trap.to_string()),
            }
        }
        None => {
            if error
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                Failure::Busy
            } else {
                Failure::Trap(first_line(&format!("{error:#}")))
            }
        }
    }
}

fn wasmtime_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}
