//! The hook table against the embedded eBPF object, without loading it: a program,
//! global or map that drifted fails here instead of quietly costing a hook a rung.

use std::collections::{BTreeSet, HashMap};

use aya_obj::{Object, ParseError, ProgramSection};

use super::{
    globals, maps,
    table::{Attach, HOOKS},
    OBJECT,
};

fn object() -> Object {
    Object::parse(OBJECT).expect("the embedded eBPF object parses")
}

/// Every attach point of the table, `FirstOf` alternatives included.
fn attach_points() -> Vec<Attach> {
    fn walk(a: &Attach, out: &mut Vec<Attach>) {
        match a {
            Attach::FirstOf(alternatives) => alternatives.iter().for_each(|a| walk(a, out)),
            a => out.push(*a),
        }
    }
    let mut out = Vec::new();
    for hook in HOOKS {
        for rung in hook.rungs {
            rung.attach.iter().for_each(|a| walk(a, &mut out));
        }
    }
    out
}

/// Whether a program's section is the kind its attach point loads it as.
fn section_fits(a: &Attach, s: &ProgramSection) -> bool {
    matches!(
        (a, s),
        (Attach::Tracepoint { .. }, ProgramSection::TracePoint)
            | (Attach::RawTracepoint { .. }, ProgramSection::RawTracePoint)
            | (Attach::Fentry { .. }, ProgramSection::FEntry { .. })
            | (Attach::Fexit { .. }, ProgramSection::FExit { .. })
            | (Attach::Kprobe { .. }, ProgramSection::KProbe)
            | (Attach::Kretprobe { .. }, ProgramSection::KRetProbe)
    )
}

/// Problems with the table's programs: missing, of the wrong type, or in the object
/// but named by no hook.
fn program_drift(obj: &Object, points: &[Attach]) -> Vec<String> {
    let mut bad = Vec::new();
    for a in points {
        let Some(name) = a.program() else { continue };
        match obj.programs.get(name) {
            None => bad.push(format!(
                "program {name} ({}) is not in the object",
                a.kind()
            )),
            Some(p) if !section_fits(a, &p.section) => bad.push(format!(
                "program {name} is a {:?} in the object, the table attaches it as a {}",
                p.section,
                a.kind()
            )),
            Some(_) => {}
        }
    }
    let named: BTreeSet<&str> = points.iter().filter_map(|a| a.program()).collect();
    for name in obj.programs.keys() {
        if !named.contains(name.as_str()) {
            bad.push(format!(
                "program {name} is in the object but no hook names it"
            ));
        }
    }
    bad
}

/// Problems with globals the agent sets: `(name, size)` missing or of another size.
fn global_drift(obj: &mut Object, wanted: &[(&str, usize)]) -> Vec<String> {
    let mut bad = Vec::new();
    for &(name, size) in wanted {
        let zero = vec![0u8; size];
        match obj.patch_map_data(HashMap::from([(name, (zero.as_slice(), true))])) {
            Ok(()) => {}
            Err(ParseError::SymbolNotFound { .. }) => {
                bad.push(format!("global {name} is not in the object"))
            }
            Err(ParseError::InvalidGlobalData { sym_size, .. }) => bad.push(format!(
                "global {name} has {sym_size} bytes in the object, the agent writes {size}"
            )),
            Err(e) => bad.push(format!("global {name}: {e}")),
        }
    }
    bad
}

/// The globals the agent sets: the tracepoints' field offsets (u32) and the rest.
fn load_globals(points: &[Attach]) -> Vec<(&'static str, usize)> {
    let mut out: Vec<(&str, usize)> = points
        .iter()
        .filter_map(|a| match a {
            Attach::Tracepoint { fields, .. } => Some(*fields),
            _ => None,
        })
        .flatten()
        .map(|(global, _)| (*global, 4))
        .collect();
    out.extend(globals::ALL.iter().map(|g| (g.name, g.size)));
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_table_matches_the_object() {
    let mut obj = object();
    let points = attach_points();
    let mut bad = program_drift(&obj, &points);
    bad.extend(global_drift(&mut obj, &load_globals(&points)));
    for name in maps::ALL {
        if !obj.maps.contains_key(*name) {
            bad.push(format!("map {name} is not in the object"));
        }
    }
    assert!(
        bad.is_empty(),
        "the hook table drifted from the eBPF object:\n{}",
        bad.join("\n")
    );
}

/// The checks above do catch a drift (a misspelt program, global or map).
#[test]
fn a_misspelling_is_caught() {
    let mut obj = object();
    let typo = [Attach::Kprobe {
        program: "cow_wp_kprobbe",
        function: "do_wp_page",
    }];
    assert!(program_drift(&obj, &typo)
        .iter()
        .any(|e| e.contains("cow_wp_kprobbe (kprobe) is not in the object")));
    // The right name, the wrong type.
    let wrong = [Attach::Kretprobe {
        program: "cow_wp_kprobe",
        function: "do_wp_page",
    }];
    assert!(program_drift(&obj, &wrong)
        .iter()
        .any(|e| e.contains("attaches it as a kretprobe")));
    assert_eq!(global_drift(&mut obj, &[("NS_PER_JIFY", 8)]).len(), 1);
    assert_eq!(global_drift(&mut obj, &[("NS_PER_JIFFY", 4)]).len(), 1);
    assert!(global_drift(&mut obj, &[("NS_PER_JIFFY", 8)]).is_empty());
    assert!(!obj.maps.contains_key("PROC_CACHES"));
}
