//! The probe ladder: for each hook of `table::HOOKS`, try its rungs in order and keep
//! the first whose programs all load and attach. A failure never stops the others.

use std::io;

use aya::{
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
    Btf, Ebpf,
};

use super::{
    resolve_tracepoint,
    table::{Attach, Hook, Mode, HOOKS},
    KernelSupport,
};
use crate::config::ProbeMode;

/// One rung tried (or skipped) for a hook.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub mode: Mode,
    /// `Ok` if it attached, with the alternatives taken where the table names some
    /// (functions `a|b`, `FirstOf` attach points; empty if none); otherwise why not.
    pub result: Result<Vec<&'static str>, String>,
    /// The rung was not tried (forced mode, or an earlier rung won).
    pub skipped: bool,
}

/// What happened to one hook.
#[derive(Debug, Clone)]
pub struct HookOutcome {
    pub hook: &'static Hook,
    pub attempts: Vec<Attempt>,
    /// The rung in use, if any.
    pub chosen: Option<Mode>,
}

impl HookOutcome {
    /// The best rung this hook has at all.
    pub fn best_mode(&self) -> Mode {
        self.hook.rungs.first().map_or(Mode::Tracepoint, |r| r.mode)
    }
}

/// Walks the ladder for every hook. With `explore`, every rung is tried even after one
/// has attached (for `memwatch probes`); `chosen` is still the one `run` would use.
pub fn attach_all(
    ebpf: &mut Ebpf,
    support: &KernelSupport,
    probes: &crate::config::Probes,
    explore: bool,
) -> Vec<HookOutcome> {
    let mode = probes.mode;
    let mut outcomes: Vec<HookOutcome> = Vec::new();
    for hook in HOOKS {
        if crate::lifecycle::stopping() {
            log::info!(
                "stop requested: not attaching {} and the hooks after it",
                hook.name()
            );
            break;
        }
        if !wanted(probes, hook) {
            log::debug!(
                "{}/{}: not selected by probes.hooks",
                hook.family(),
                hook.name()
            );
            continue;
        }
        let forced = forced_mode(hook, mode);
        let mut attempts = Vec::new();
        let mut chosen = None;
        for rung in hook.rungs {
            if let Some(f) = forced {
                if rung.mode != f {
                    attempts.push(Attempt {
                        mode: rung.mode,
                        result: Err(format!("not tried: --probe-mode={mode}")),
                        skipped: true,
                    });
                    continue;
                }
            }
            if chosen.is_some() && !explore {
                attempts.push(Attempt {
                    mode: rung.mode,
                    result: Err("not tried: a better rung attached".into()),
                    skipped: true,
                });
                continue;
            }
            let result = attach_rung(ebpf, support, rung.attach, &outcomes);
            match &result {
                Ok(picked) => log::debug!(
                    "{}/{}: {} attached{}",
                    hook.family(),
                    hook.name(),
                    rung.mode,
                    on_functions(picked)
                ),
                Err(e) => log::debug!(
                    "{}/{}: {} failed: {e}",
                    hook.family(),
                    hook.name(),
                    rung.mode
                ),
            }
            if result.is_ok() && chosen.is_none() {
                chosen = Some(rung.mode);
            }
            attempts.push(Attempt {
                mode: rung.mode,
                result,
                skipped: false,
            });
        }
        log_outcome(hook, chosen, &attempts);
        outcomes.push(HookOutcome {
            hook,
            attempts,
            chosen,
        });
    }
    outcomes
}

/// Whether a hook is selected by `probes.hooks`, or feeds a selected hook's rung.
fn wanted(probes: &crate::config::Probes, hook: &Hook) -> bool {
    probes.wants(hook.family(), hook.name())
        || HOOKS.iter().any(|h| {
            probes.wants(h.family(), h.name())
                && h.rungs.iter().any(|r| {
                    r.attach
                        .iter()
                        .any(|a| matches!(a, Attach::Shared { hook: x } if *x == hook.id))
                })
        })
}

/// The one line a hook's ladder walk logs: the rung it runs on, or why none.
fn log_outcome(hook: &Hook, chosen: Option<Mode>, attempts: &[Attempt]) {
    match chosen {
        Some(m) => {
            let picked = attempts
                .iter()
                .find(|a| a.mode == m)
                .and_then(|a| a.result.as_ref().ok())
                .map(|p| on_functions(p))
                .unwrap_or_default();
            log::info!("probe {}/{}: {m}{picked}", hook.family(), hook.name())
        }
        None => log::warn!(
            "probe {}/{}: no rung attached ({}); its metrics will be absent",
            hook.family(),
            hook.name(),
            attempts
                .iter()
                .filter_map(|a| a.result.as_ref().err().map(|e| format!("{}: {e}", a.mode)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// " (on a, b)" for the alternatives taken (functions, `FirstOf` picks), "" for none.
pub fn on_functions(picked: &[&str]) -> String {
    if picked.is_empty() {
        String::new()
    } else {
        format!(" (on {})", picked.join(", "))
    }
}

/// The rung a forced mode selects for this hook: the forced one where the hook has it,
/// else none (the hook walks its own ladder).
fn forced_mode(hook: &Hook, mode: ProbeMode) -> Option<Mode> {
    let m = match mode {
        ProbeMode::Auto => return None,
        ProbeMode::Fentry => Mode::Fentry,
        ProbeMode::Kprobe => Mode::Kprobe,
        ProbeMode::Tracepoint => Mode::Tracepoint,
    };
    hook.rungs.iter().any(|r| r.mode == m).then_some(m)
}

/// Attaches every program of a rung, or none: on failure the ones already attached
/// are unloaded again. Where the table names alternative functions (`a|b`, the same
/// list for a rung's entry and exit programs), the rung is tried on each in turn.
/// Returns the alternatives taken (functions, and `FirstOf` picks).
fn attach_rung(
    ebpf: &mut Ebpf,
    support: &KernelSupport,
    attach: &[Attach],
    done: &[HookOutcome],
) -> Result<Vec<&'static str>, String> {
    let alternatives = attach
        .iter()
        .map(|a| a.function().map_or(1, |f| f.split('|').count()))
        .max()
        .unwrap_or(1);
    let mut errors = Vec::new();
    'alt: for alt in 0..alternatives {
        let mut attached = Vec::new();
        let mut picked = Vec::new();
        for a in attach {
            match attach_one(ebpf, support, a, alt, done) {
                Ok(f) => {
                    attached.push(*a);
                    picked.extend(f);
                }
                Err(e) => {
                    for a in attached {
                        unload(ebpf, &a);
                    }
                    errors.push(e);
                    continue 'alt;
                }
            }
        }
        picked.dedup();
        return Ok(picked);
    }
    errors.dedup();
    Err(errors.join("; "))
}

/// Attaches one program; a function hook on its `alt`-th alternative function (the
/// last one if it has fewer), which is returned when there are alternatives.
fn attach_one(
    ebpf: &mut Ebpf,
    support: &KernelSupport,
    attach: &Attach,
    alt: usize,
    done: &[HookOutcome],
) -> Result<Option<&'static str>, String> {
    let function = attach.function().map(|f| {
        let all: Vec<&'static str> = f.split('|').collect();
        let pick = all.get(alt).or(all.last()).copied().unwrap_or(f);
        (pick, all.len() > 1)
    });
    let named = |r: Result<(), String>| match function {
        Some((f, true)) => r.map(|()| Some(f)).map_err(|e| format!("{f}: {e}")),
        _ => r.map(|()| None),
    };
    match *attach {
        Attach::Shared { hook } => match done.iter().find(|o| o.hook.id == hook) {
            Some(o) if o.chosen.is_some() => Ok(None),
            _ => Err(format!("fed by hook {hook}, which did not attach")),
        },
        Attach::FirstOf(alternatives) => {
            let mut errors = Vec::new();
            for a in alternatives {
                match attach_one(ebpf, support, a, alt, done) {
                    Ok(picked) => return Ok(picked.or(Some(a.kind()))),
                    Err(e) => errors.push(format!("{}: {e}", a.kind())),
                }
            }
            Err(errors.join("; "))
        }
        Attach::RawTracepoint { program, name, btf } => {
            if btf {
                support.raw_layouts()?;
            }
            let p: &mut RawTracePoint = program_mut(ebpf, program)?;
            load_once(p.load()).map_err(|e| explain("load", &e))?;
            p.attach(name).map(|_| None).map_err(|e| {
                let _ = p.unload();
                explain("attach", &e)
            })
        }
        Attach::Tracepoint {
            program,
            events,
            fields,
        } => {
            let tracefs = support.tracefs.as_ref().map_err(Clone::clone)?;
            let ((category, name), _) = resolve_tracepoint(tracefs, events, fields)?;
            let p: &mut TracePoint = program_mut(ebpf, program)?;
            load_once(p.load()).map_err(|e| explain("load", &e))?;
            p.attach(category, name)
                .map(|_| None)
                .map_err(|e| explain("attach", &e))
        }
        Attach::Fentry { program, .. } => {
            let btf = support.btf.as_ref().map_err(Clone::clone)?;
            let p: &mut FEntry = program_mut(ebpf, program)?;
            named(trampoline(p, function.map_or("", |f| f.0), btf))
        }
        Attach::Fexit { program, .. } => {
            let btf = support.btf.as_ref().map_err(Clone::clone)?;
            let p: &mut FExit = program_mut(ebpf, program)?;
            named(trampoline(p, function.map_or("", |f| f.0), btf))
        }
        Attach::Kprobe { program, .. } | Attach::Kretprobe { program, .. } => {
            support.kprobes.clone()?;
            let f = function.map_or("", |f| f.0);
            let p: &mut KProbe = program_mut(ebpf, program)?;
            load_once(p.load()).map_err(|e| explain("load", &e))?;
            named(p.attach(f, 0).map(drop).map_err(|e| explain("attach", &e)))
        }
    }
}

/// An fentry or fexit program: bound to its function when loaded.
trait Trampoline {
    fn load_on(&mut self, function: &str, btf: &Btf) -> Result<(), ProgramError>;
    fn attach_now(&mut self) -> Result<(), ProgramError>;
    fn unload_now(&mut self) -> Result<(), ProgramError>;
}

macro_rules! trampoline_impl {
    ($t:ty) => {
        impl Trampoline for $t {
            fn load_on(&mut self, function: &str, btf: &Btf) -> Result<(), ProgramError> {
                self.load(function, btf)
            }
            fn attach_now(&mut self) -> Result<(), ProgramError> {
                self.attach().map(drop)
            }
            fn unload_now(&mut self) -> Result<(), ProgramError> {
                self.unload()
            }
        }
    };
}
trampoline_impl!(FEntry);
trampoline_impl!(FExit);

/// Loads a trampoline program on `function` and attaches it; on failure it is left
/// unloaded, so it can be tried on another function.
fn trampoline(p: &mut impl Trampoline, function: &str, btf: &Btf) -> Result<(), String> {
    match p.load_on(function, btf) {
        Ok(()) => {}
        Err(ProgramError::AlreadyLoaded) => {
            // Loaded on an earlier try: it may be bound to another function.
            let _ = p.unload_now();
            p.load_on(function, btf).map_err(|e| explain("load", &e))?;
        }
        Err(e) => return Err(explain("load", &e)),
    }
    p.attach_now().map_err(|e| {
        let _ = p.unload_now();
        explain("attach", &e)
    })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the eBPF object"))?;
    p.try_into()
        .map_err(|e: ProgramError| format!("program {name}: {e}"))
}

fn load_once(r: Result<(), ProgramError>) -> Result<(), ProgramError> {
    match r {
        Err(ProgramError::AlreadyLoaded) => Ok(()),
        r => r,
    }
}

/// Detaches and unloads the program of one attach point.
fn unload(ebpf: &mut Ebpf, attach: &Attach) {
    if let Attach::FirstOf(alternatives) = attach {
        for a in *alternatives {
            unload(ebpf, a);
        }
        return;
    }
    let Some(name) = attach.program() else {
        return;
    };
    let result = match attach {
        Attach::Tracepoint { .. } => program_mut::<TracePoint>(ebpf, name).map(|p| p.unload()),
        Attach::RawTracepoint { .. } => {
            program_mut::<RawTracePoint>(ebpf, name).map(|p| p.unload())
        }
        Attach::Fentry { .. } => program_mut::<FEntry>(ebpf, name).map(|p| p.unload()),
        Attach::Fexit { .. } => program_mut::<FExit>(ebpf, name).map(|p| p.unload()),
        Attach::Kprobe { .. } | Attach::Kretprobe { .. } => {
            program_mut::<KProbe>(ebpf, name).map(|p| p.unload())
        }
        Attach::FirstOf(_) | Attach::Shared { .. } => return,
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("unloading {name}: {e}"),
        Err(e) => log::debug!("unloading {name}: {e}"),
    }
}

/// A one-line reason from an aya error: the syscall and the errno by name, e.g.
/// `BPF_PROG_LOAD: EPERM (Operation not permitted)`. A verifier log goes to the log.
fn explain(step: &str, e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if !log.trim().is_empty() {
                log::warn!("verifier log:\n{log}");
            }
            format!("BPF_PROG_LOAD: {}", errno(io_error))
        }
        ProgramError::SyscallError(s) => format!("{}: {}", s.call, errno(&s.io_error)),
        other => {
            let mut msg = format!("{step}: {other}");
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        }
    }
}

fn errno(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ESRCH) => "ESRCH",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EACCES) => "EACCES",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(524) => "ENOTSUPP",
        _ => return e.to_string(),
    };
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    format!("{name} ({text})")
}
